"""Variants within a group (a run's overrides minus `seed`), their per-metric statistics, the
baseline each is compared with, and the comparisons of one table with Holm's adjustment."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import yaml

from vae_bench.report.runs import (
    ReportError,
    Run,
    comparable_config,
    config_choice,
    epoch_curve,
    override_group,
    split_override,
)
from vae_bench.report.stats import Stat, TestResult, adjust_family, paired_t, welch_t

METRICS = ("test/elbo", "test/nll_iwae", "test/kl", "latent/active_units")
# Logged by some studies only: a second IWAE estimate after training, with a larger k
# (eval.iwae_k_final). A report shows and compares it where some run has it; every other report
# keeps the four metrics above, and the same Holm family.
OPTIONAL_METRICS = ("test/nll_iwae_final",)
METRIC_DECIMALS = {"test/elbo": 2, "test/nll_iwae": 2, "test/kl": 2, "latent/active_units": 1,
                   "test/nll_iwae_final": 2}
# +1: higher is better, -1: lower is better; the KL and the active units are neither by themselves.
METRIC_DIRECTION = {"test/elbo": 1, "test/nll_iwae": -1, "test/nll_iwae_final": -1}
DEFAULT_BASELINE = "param=logvar"


@dataclass
class Variant:
    key: tuple[str, ...]
    runs: list[Run]  # duplicates already set aside
    label: str = ""
    stats: dict[str, Stat] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(run.status == status for run in self.runs)

    @property
    def divergence(self) -> tuple[int, int]:
        """(diverged, finished): failed or unfinished runs say nothing about stability."""
        diverged = self.count("diverged")
        return diverged, diverged + self.count("completed")

    def representative_config(self) -> dict:
        return self.runs[0].config if self.runs else {}


def display_item(item: str) -> str:
    key, value = split_override(item)
    # A preset's name says what it sets; `experiment@_global_=logstd_equivalence_sgd_matched`
    # reads better as the name alone.
    return value if override_group(key) == "experiment" else f"{key}={value}"


def labels_for(keys: Sequence[tuple[str, ...]]) -> list[str]:
    """Labels that drop the items every key shares (e.g. the preset's name)."""
    shared = set.intersection(*(set(k) for k in keys)) if len(keys) > 1 else set()
    labels = []
    for key in keys:
        items = [display_item(i) for i in key if i not in shared]
        labels.append(",".join(items) or ",".join(display_item(i) for i in key)
                      or "(no overrides)")
    return labels


def seed_values(runs: list[Run], metric: str) -> list[tuple[object, float]]:
    values = []
    for run in runs:
        value = run.final(metric) if run.status == "completed" else None
        if value is not None:
            values.append((run.seed, value))
    return values


def group_variants(runs: list[Run]) -> list[Variant]:
    by_key: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        by_key.setdefault(run.variant, []).append(run)
    variants = [Variant(key, sorted(members, key=lambda r: (str(r.seed), str(r.path))))
                for key, members in sorted(by_key.items())]
    for variant, label in zip(variants, labels_for([v.key for v in variants])):
        variant.label = label
        variant.stats = {m: Stat([v for _, v in seed_values(variant.runs, m)])
                         for m in METRICS + OPTIONAL_METRICS}
    return variants


def shown_metrics(variants: Sequence[Variant]) -> tuple[str, ...]:
    """The metrics a group's tables, figures and comparisons cover: the four of every report,
    and each optional one some completed run of the group logged."""
    return METRICS + tuple(m for m in OPTIONAL_METRICS
                           if any(v.stats[m].n for v in variants))


def epochs_to_target(run: Run, target: float) -> int | None:
    for epoch, value in sorted(epoch_curve(run).items()):
        if value >= target:
            return epoch
    return None


def baseline_target(variants: list[Variant], spec: tuple[str, str | None]
                    ) -> tuple[float | None, str]:
    """The baseline's final mean test ELBO, and where it comes from: "epochs to target" then
    says how soon each variant gets as good as the baseline ends up ("never": it does not).
    With several baseline variants (one per lr, say), the best of them."""
    baselines = [v for v in variants if matches_baseline(v, spec) and v.stats["test/elbo"].n]
    if not baselines:
        return None, ("no baseline variant completed a run here, so there is no default "
                      "target; set one with --target-elbo")
    best = max(baselines, key=lambda v: v.stats["test/elbo"].mean)
    among = f", the best of {len(baselines)} baseline variants" if len(baselines) > 1 else ""
    return best.stats["test/elbo"].mean, (f"default: the final mean test ELBO of the baseline "
                                          f"`{best.label}`{among}; set another with "
                                          "--target-elbo")


# ---------------------------------------------------------------------------------------------
# Baselines


def config_distance(a: dict, b: dict) -> int:
    a, b = comparable_config(a), comparable_config(b)
    return sum(a.get(k) != b.get(k) for k in set(a) | set(b))


def parse_baseline(spec: str) -> tuple[str, str | None]:
    """KEY=VALUE, or a variant's label as the tables show it (then the value is None)."""
    key, sep, value = spec.partition("=")
    if not key or (sep and not value):
        raise ReportError(f"--baseline {spec!r} must be KEY=VALUE (e.g. param=logvar) or a "
                          "variant label from the report's tables")
    return (key.lstrip("+~"), value) if sep else (spec, None)


def matches_baseline(variant: Variant, spec: tuple[str, str | None]) -> bool:
    key, value = spec
    as_typed = key if value is None else f"{key}={value}"
    if as_typed in (variant.label, *(display_item(i) for i in variant.key)):
        return True  # a label copied from a table, e.g. `optim.lr=0.01,param=logvar`
    if value is None:
        return False
    for item in variant.key:
        item_key, item_value = split_override(item)
        # `experiment=NAME` also finds a preset added as `+experiment@_global_=NAME`.
        if item_value == value and key in (item_key, override_group(item_key)):
            return True
    expected = yaml.safe_load(value)
    return bool(variant.runs) and all(config_choice(run.config, key) == expected
                                      for run in variant.runs)


def pick_baselines(variants: list[Variant], spec: tuple[str, str | None]
                   ) -> dict[tuple[str, ...], tuple[Variant, int]]:
    """For each variant that is not itself a baseline, the baseline variant whose config is
    closest: with `param=logvar`, `param=logstd,optim.lr=0.01` is compared with
    `param=logvar,optim.lr=0.01`, not with logvar at another learning rate. The int counts the
    baselines at that same distance (more than 1 means the choice was ambiguous)."""
    candidates = [v for v in variants if matches_baseline(v, spec)]
    chosen = {}
    for variant in variants:
        if not candidates or variant in candidates:
            continue
        distances = [(config_distance(variant.representative_config(),
                                      c.representative_config()), i)
                     for i, c in enumerate(candidates)]
        best = min(d for d, _ in distances)
        ties = [i for d, i in distances if d == best]
        chosen[variant.key] = (candidates[ties[0]], len(ties))
    return chosen


# ---------------------------------------------------------------------------------------------
# Comparisons


@dataclass
class Comparison:
    variant: Variant
    baseline: Variant
    ties: int  # baselines equally close in config; > 1: the choice was ambiguous
    metric: str
    result: TestResult

    @property
    def verdict(self) -> str:
        result = self.result
        if result.difference is None:
            return "n/a: a side has no completed run"
        if not result.tested:
            return "unknown: no test (" + result.method.removeprefix("none: ") + ")"
        if not result.beyond_noise:
            return "no"
        direction = METRIC_DIRECTION.get(self.metric)
        if direction is None:
            return "yes"
        better = (result.difference > 0) == (direction > 0)
        return f"yes: variant {'better' if better else 'worse'}"


def compare(variant_runs: list[Run], baseline_runs: list[Run], metric: str) -> TestResult:
    """variant − baseline over completed seeds: a paired t test when both sides have exactly
    the same seeds (each once), which removes the seed-to-seed spread both share; Welch's t
    otherwise."""
    mine = seed_values(variant_runs, metric)
    theirs = seed_values(baseline_runs, metric)
    if not mine or not theirs:
        return TestResult(None, None, None, "none: a side has no completed run",
                          len(mine), len(theirs))
    my_seeds, their_seeds = [s for s, _ in mine], [s for s, _ in theirs]
    unique = len(my_seeds) == len(set(my_seeds)) and len(their_seeds) == len(set(their_seeds))
    if unique and set(my_seeds) == set(their_seeds):
        base = dict(theirs)
        return paired_t([v for _, v in mine], [base[seed] for seed, _ in mine])
    return welch_t([v for _, v in mine], [v for _, v in theirs])


def compare_group(variants: list[Variant], spec: tuple[str, str | None]) -> list[Comparison]:
    """Every variant against its baseline on every metric: one family for Holm's adjustment."""
    baselines = pick_baselines(variants, spec)
    metrics = shown_metrics(variants)
    comparisons = []
    for variant in variants:
        if variant.key not in baselines:
            continue
        baseline, ties = baselines[variant.key]
        comparisons += [Comparison(variant, baseline, ties, metric,
                                   compare(variant.runs, baseline.runs, metric))
                        for metric in metrics]
    adjust_family([c.result for c in comparisons])
    return comparisons


def mean_epochs_to_target(variant: Variant, target: float | None) -> tuple[float | None, int, int]:
    """(mean first epoch reaching target over the runs that did, how many did, finished runs)."""
    finished = [r for r in variant.runs if r.status in ("completed", "diverged")]
    if target is None or not finished:
        return None, 0, len(finished)
    reached = [e for e in (epochs_to_target(r, target) for r in finished) if e is not None]
    return (float(np.mean(reached)) if reached else None), len(reached), len(finished)
