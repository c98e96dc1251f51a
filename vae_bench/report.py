"""`vae-bench report <folder> [...]`: compare the runs of one or more sweeps.

Every run folder under the given folders is found (a folder holding config.yaml or .hydra/),
grouped by dataset/model/likelihood, and split into variants: a run's overrides minus `seed`
(and minus the keys that only say where or how loudly a job runs). Seeds of one variant are
pooled, also across sweeps. Written to `--out` (default: the first folder):

  report.csv   one row per run: status, overrides, config essentials, every final metric
  report.md    per group: mean ± std and a 95% bootstrap CI over seeds, divergence rate, epochs
               to a target ELBO, the difference to a baseline variant with its CI, an lr
               stability table and a logvar/logstd equivalence check where the runs allow them
  *.png        test ELBO per epoch, μ/σ-head gradient norms, σ at the end, final metrics

Nothing is dropped silently: runs that diverged, failed, are still running or have no
summary.json are counted and listed. Statistics of final metrics use completed runs only,
because a diverged run keeps the last finite values of an unfinished model.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from vae_bench.tracking import atomic_write_text, process_gone

METRICS = ("test/elbo", "test/nll_iwae", "test/kl", "latent/active_units")
METRIC_DECIMALS = {"test/elbo": 2, "test/nll_iwae": 2, "test/kl": 2, "latent/active_units": 1}
# +1: higher is better, -1: lower is better; the KL and the active units are neither by themselves.
METRIC_DIRECTION = {"test/elbo": 1, "test/nll_iwae": -1}
DEFAULT_GROUP_BY = ("dataset", "model", "likelihood")
DEFAULT_BASELINE = "param=logvar"
NO_SUMMARY = "no_summary"
KILLED = "killed"  # summary.json says running, but its process is gone
STATUS_ORDER = ("completed", "diverged", "failed", "interrupted", KILLED, "running", NO_SUMMARY)
CONFIDENCE = 0.95
# The keys train.yaml keeps out of job folder names, should train.yaml not be readable.
FALLBACK_EXCLUDE_KEYS = ("experiment", "data.root", "data.download", "trainer.device",
                         "trainer.threads", "log.quiet", "hydra.launcher", "hydra/launcher")
# Config keys that turn logstd into logvar (see ModelConfig/OptimConfig); the equivalence check
# pairs runs whose configs agree on everything else.
SIGMA_HEAD_KEYS = ("model.sigma_head_scale", "model.sigma_head_init_scale",
                   "optim.sigma_head_lr_mult")
# What the objective computes; diagnostics such as grad/norm_sigma_head legitimately differ by a
# constant factor between logvar and an equivalent logstd, so they are not part of "bitwise".
OBJECTIVE_TAGS = ("train/elbo", "train/recon_nll", "train/kl", "test/elbo", "test/recon_nll",
                  "test/kl", "test/nll_iwae", "latent/active_units")
# Config keys that never make two runs different experiments.
IGNORED_CONFIG_PREFIXES = ("seed", "data.", "trainer.device", "trainer.threads", "log.quiet")


class ReportError(ValueError):
    """Bad input to the report: a missing folder, no runs, a malformed option."""


# ---------------------------------------------------------------------------------------------
# Reading run folders


@dataclass
class Run:
    path: Path
    sweep: Path
    status: str
    config: dict  # flattened: {"param.name": "logstd", "optim.lr": 0.001, ...}
    overrides: list[str]
    summary: dict
    variant: tuple[str, ...] = ()  # sorted "key=value" items that define the variant
    group: tuple[str, ...] = ()
    _records: list[dict] | None = field(default=None, repr=False)

    @property
    def seed(self):
        return self.config.get("seed", override_value(self.overrides, "seed"))

    @property
    def name(self) -> str:
        relative = self.path.relative_to(self.sweep).as_posix()
        return self.sweep.name if relative == "." else f"{self.sweep.name}/{relative}"

    def records(self) -> list[dict]:
        if self._records is None:
            self._records = read_records(self.path / "metrics.jsonl")
        return self._records

    def final(self, tag: str) -> float | None:
        return as_float(self.summary.get(tag))


def as_float(value) -> float | None:
    """A finite float, or None (summary.json writes NaN/Inf as strings)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_records(path: Path) -> list[dict]:
    """metrics.jsonl, tolerating a last line cut short by a killed process."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def flatten(node, prefix: str = "") -> dict:
    if not isinstance(node, dict):
        return {prefix: node} if prefix else {}
    flat = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}{key}.") if isinstance(value, dict)
                    else {f"{prefix}{key}": value})
    return flat


def load_yaml(path: Path):
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def is_run_folder(path: Path) -> bool:
    return (path / "config.yaml").is_file() or (path / ".hydra").is_dir()


def find_run_folders(root: Path) -> list[Path]:
    """Run folders under root (root itself may be one); a run folder is not searched further,
    so its .hydra/ and checkpoints/ are never mistaken for runs."""
    if is_run_folder(root):
        return [root]
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        here = Path(dirpath)
        if here != root and is_run_folder(here):
            found.append(here)
            dirnames.clear()
            continue
        # .hydra and .submitit hold Hydra's and submitit's own files, never runs.
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return found


def split_override(line: str) -> tuple[str, str]:
    key, _, value = line.partition("=")
    return key.lstrip("+~"), value


def override_group(key: str) -> str:
    return key.split("@", 1)[0]


def override_value(overrides: list[str], key: str):
    for line in overrides:
        name, value = split_override(line)
        if name == key:
            return yaml.safe_load(value) if value else value
    return None


def load_run(path: Path, sweep: Path) -> Run:
    config = load_yaml(path / "config.yaml")
    if not isinstance(config, dict):
        config = load_yaml(path / ".hydra" / "config.yaml")
    overrides = load_yaml(path / ".hydra" / "overrides.yaml")
    summary = None
    if (path / "summary.json").is_file():
        try:
            summary = json.loads((path / "summary.json").read_text())
        except (OSError, json.JSONDecodeError):
            summary = None
    status = summary.get("status", "unknown") if isinstance(summary, dict) else NO_SUMMARY
    if status == "running" and process_gone(summary):
        status = KILLED
    run = Run(path=path, sweep=sweep, status=status,
              config=flatten(config) if isinstance(config, dict) else {},
              overrides=[str(o) for o in overrides] if isinstance(overrides, list) else [],
              summary=summary if isinstance(summary, dict) else {})
    return run


def excluded_override_keys() -> set[str]:
    """Override keys that say where or how loudly a job ran: train.yaml's list of keys kept out
    of job folder names. (A run's own .hydra/hydra.yaml is no guide: `vae-bench train -m` also
    leaves the overrides every job shares out of folder names.)

    `experiment` is taken back in: it is out of folder names because the sweep folder already
    tells which preset ran, but a preset does change what a run computes.
    """
    from vae_bench.config import config_dir

    train_yaml = load_yaml(config_dir() / "train.yaml")
    try:
        keys = train_yaml["hydra"]["job"]["config"]["override_dirname"]["exclude_keys"]
    except (TypeError, KeyError):
        keys = None
    keys = set(keys if isinstance(keys, list) else FALLBACK_EXCLUDE_KEYS)
    return keys - {"experiment"}


def variant_of(overrides: list[str], excluded: set[str]) -> tuple[str, ...]:
    items = []
    for line in overrides:
        key, value = split_override(line)
        group = override_group(key)
        if key == "seed" or group in excluded or group.startswith(("hydra.", "hydra/")):
            continue
        items.append(f"{key}={value}")
    return tuple(sorted(items))


def config_choice(config: dict, key: str):
    """`dataset` -> config["dataset.name"]; any other key is read as is."""
    return config.get(f"{key}.name", config.get(key))


def load_runs(folders: Sequence[Path], group_by: Sequence[str]) -> list[Run]:
    excluded = excluded_override_keys()
    runs, seen = [], set()
    for folder in folders:
        for path in find_run_folders(folder):
            if path.resolve() in seen:  # a folder passed twice, or inside another one passed
                continue
            seen.add(path.resolve())
            run = load_run(path, folder)
            run.variant = variant_of(run.overrides, excluded)
            run.group = tuple(f"{key}={none_as_unknown(config_choice(run.config, key))}"
                              for key in group_by)
            runs.append(run)
    return runs


def none_as_unknown(value) -> object:
    return "?" if value is None else value


# ---------------------------------------------------------------------------------------------
# Statistics


def bootstrap_mean_ci(values: Sequence[float], rng: np.random.Generator, resamples: int
                      ) -> tuple[float, float] | None:
    """Percentile bootstrap CI of the mean; None below two values, where there is no spread
    to resample and any interval would be made up."""
    data = np.asarray(values, dtype=float)
    if len(data) < 2:
        return None
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    alpha = (1 - CONFIDENCE) / 2
    return float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha))


def bootstrap_difference_ci(a: Sequence[float], b: Sequence[float], rng: np.random.Generator,
                            resamples: int) -> tuple[float, float] | None:
    """CI of mean(a) - mean(b) for independent samples: each side resampled on its own."""
    a_data, b_data = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a_data) < 2 or len(b_data) < 2:
        return None
    a_means = a_data[rng.integers(0, len(a_data), size=(resamples, len(a_data)))].mean(axis=1)
    b_means = b_data[rng.integers(0, len(b_data), size=(resamples, len(b_data)))].mean(axis=1)
    alpha = (1 - CONFIDENCE) / 2
    diffs = a_means - b_means
    return float(np.quantile(diffs, alpha)), float(np.quantile(diffs, 1 - alpha))


@dataclass
class Stat:
    values: list[float]
    ci: tuple[float, float] | None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float | None:
        return float(np.mean(self.values)) if self.values else None

    @property
    def std(self) -> float | None:
        return float(np.std(self.values, ddof=1)) if len(self.values) > 1 else None


@dataclass
class Comparison:
    metric: str
    difference: float | None
    ci: tuple[float, float] | None
    pairing: str
    n_variant: int
    n_baseline: int

    @property
    def verdict(self) -> str:
        if self.difference is None:
            return "n/a: a side has no completed run"
        if self.ci is None:
            return "unknown: fewer than 2 seeds on a side, no CI"
        if self.ci[0] > 0 or self.ci[1] < 0:
            direction = METRIC_DIRECTION.get(self.metric)
            if direction is None:
                return "yes (CI excludes 0)"
            better = (self.difference > 0) == (direction > 0)
            return f"yes (CI excludes 0): variant {'better' if better else 'worse'}"
        return "no (CI includes 0)"


def compare(variant_runs: list[Run], baseline_runs: list[Run], metric: str,
            rng: np.random.Generator, resamples: int) -> Comparison:
    """Difference of means (variant - baseline) with a bootstrap CI over seeds, paired by seed
    when both sides have the same seeds, which removes the seed-to-seed spread both share."""
    mine = seed_values(variant_runs, metric)
    theirs = seed_values(baseline_runs, metric)
    if not mine or not theirs:
        return Comparison(metric, None, None, "-", len(mine), len(theirs))
    unique = len(mine) == len({s for s, _ in mine}) and len(theirs) == len({s for s, _ in theirs})
    if unique and {s for s, _ in mine} == {s for s, _ in theirs}:
        base = dict(theirs)
        diffs = [value - base[seed] for seed, value in mine]
        return Comparison(metric, float(np.mean(diffs)), bootstrap_mean_ci(diffs, rng, resamples),
                          f"paired by seed (n={len(diffs)})", len(mine), len(theirs))
    a, b = [v for _, v in mine], [v for _, v in theirs]
    return Comparison(metric, float(np.mean(a) - np.mean(b)),
                      bootstrap_difference_ci(a, b, rng, resamples),
                      f"unpaired (n={len(a)} vs {len(b)})", len(a), len(b))


def seed_values(runs: list[Run], metric: str) -> list[tuple[object, float]]:
    values = []
    for run in runs:
        value = run.final(metric) if run.status == "completed" else None
        if value is not None:
            values.append((run.seed, value))
    return values


def epoch_curve(run: Run, tag: str = "test/elbo") -> dict[int, float]:
    curve = {}
    for record in run.records():
        value = as_float(record.get(tag))
        if value is not None and record.get("epoch") is not None:
            curve[int(record["epoch"])] = value
    return curve


def step_curve(run: Run, tag: str) -> dict[int, float]:
    curve = {}
    for record in run.records():
        value = as_float(record.get(tag))
        if value is not None:
            curve[int(record["step"])] = value
    return curve


def epochs_to_target(run: Run, target: float) -> int | None:
    for epoch, value in sorted(epoch_curve(run).items()):
        if value >= target:
            return epoch
    return None


# ---------------------------------------------------------------------------------------------
# Variants within a group


@dataclass
class Variant:
    key: tuple[str, ...]
    runs: list[Run]
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


def label_variants(variants: list[Variant]) -> None:
    """Labels drop the items every variant of the group shares (e.g. the preset's name)."""
    shared = set.intersection(*(set(v.key) for v in variants)) if len(variants) > 1 else set()
    for variant in variants:
        items = [display_item(i) for i in variant.key if i not in shared]
        variant.label = ",".join(items) or ",".join(display_item(i) for i in variant.key) \
            or "(no overrides)"


def group_variants(runs: list[Run]) -> list[Variant]:
    by_key: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        by_key.setdefault(run.variant, []).append(run)
    variants = [Variant(key, sorted(members, key=lambda r: (str(r.seed), str(r.path))))
                for key, members in sorted(by_key.items())]
    label_variants(variants)
    return variants


def comparable_config(config: dict, ignore: Iterable[str] = ()) -> dict:
    ignore = tuple(ignore)
    return {k: v for k, v in config.items()
            if not k.startswith(IGNORED_CONFIG_PREFIXES) and k not in ignore}


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
# logvar/logstd equivalence


def expected_equivalence(config: dict) -> str:
    """Whether a logstd run's σ-head knobs make it the same model and updates as logvar.

    logstd gives log σ² = 2·scale·h with h = W'x + b'; logvar gives log σ² = Wx + b. Let
    k = 2·scale. Equal at step 0 needs k·init_scale = 1 (same seed, same initial W). SGD moves
    W' by lr·mult·k·g, hence k·W' by k²·mult·lr·g: equal updates need k²·mult = 1. Adam's step
    ignores the gradient's scale (up to ε), so it needs k·mult = 1.
    """
    scale = float(config.get("model.sigma_head_scale", 1.0))
    init = float(config.get("model.sigma_head_init_scale", 1.0))
    mult = float(config.get("optim.sigma_head_lr_mult", 1.0))
    k = 2.0 * scale
    if not math.isclose(k * init, 1.0):
        return "no (different function at initialisation)"
    if math.isclose(k, 1.0) and math.isclose(mult, 1.0):
        return "yes, exactly (same parameters, same updates)"
    if float(config.get("optim.weight_decay", 0.0) or 0.0) or config.get("optim.grad_clip"):
        return "no (weight decay or gradient clipping see the rescaled weights)"
    optimizer = config.get("optim.name")
    if optimizer == "sgd" and math.isclose(k * k * mult, 1.0):
        return "yes, exactly under SGD"
    if optimizer == "adam" and math.isclose(k * mult, 1.0):
        return "yes, up to Adam's ε"
    return "no (the σ-head learning rate does not match)"


def tagged_values(run: Run, tags: Sequence[str]) -> dict[tuple[str, int], object]:
    values = {}
    for record in run.records():
        for tag in tags:
            if tag in record:
                values[(tag, int(record["step"]))] = record[tag]
    return values


@dataclass
class EquivalenceRow:
    logstd: Run
    logvar: Run
    expected: str
    max_abs_elbo: float | None
    epochs: int
    bitwise: bool
    first_difference: str | None


def equivalence_rows(runs: list[Run]) -> list[EquivalenceRow]:
    """Each logstd run against the logvar run with the same seed and otherwise the same config
    (the σ-head knobs and param options aside)."""
    def partner_key(run: Run):
        config = comparable_config(run.config, SIGMA_HEAD_KEYS)
        config = {k: v for k, v in config.items() if not k.startswith("param.")}
        return str(run.seed), json.dumps(config, sort_keys=True, default=str)

    logvar_runs = {}
    for run in runs:
        if run.config.get("param.name") == "logvar":
            logvar_runs.setdefault(partner_key(run), run)
    rows = []
    for run in runs:
        if run.config.get("param.name") != "logstd":
            continue
        partner = logvar_runs.get(partner_key(run))
        if partner is None:
            continue
        mine, theirs = epoch_curve(run), epoch_curve(partner)
        common = sorted(set(mine) & set(theirs))
        max_abs = max((abs(mine[e] - theirs[e]) for e in common), default=None)
        a, b = tagged_values(run, OBJECTIVE_TAGS), tagged_values(partner, OBJECTIVE_TAGS)
        differing = sorted((step, tag) for (tag, step) in set(a) | set(b)
                           if a.get((tag, step)) != b.get((tag, step)))
        first = f"{differing[0][1]} at step {differing[0][0]}" if differing else None
        rows.append(EquivalenceRow(run, partner, expected_equivalence(run.config), max_abs,
                                   len(common), bool(a) and not differing, first))
    return rows


def has_sigma_head_knobs(runs: list[Run]) -> bool:
    return any(as_float(run.config.get(key)) not in (None, 1.0)
               for run in runs for key in SIGMA_HEAD_KEYS)


# ---------------------------------------------------------------------------------------------
# Formatting


def fmt(value: float | None, decimals: int = 2) -> str:
    return "—" if value is None else f"{value:.{decimals}f}"


def fmt_small(value: float | None) -> str:
    """Differences that may be exactly 0 or 1e-6: three significant digits, not fixed decimals."""
    return "—" if value is None else f"{value:.3g}"


def fmt_stat(stat: Stat, decimals: int, with_ci: bool = True) -> str:
    if stat.n == 0:
        return "—"
    text = fmt(stat.mean, decimals)
    text += f" ± {fmt(stat.std, decimals)}" if stat.std is not None else " (n=1)"
    if with_ci:
        text += f" [{fmt(stat.ci[0], decimals)}, {fmt(stat.ci[1], decimals)}]" if stat.ci \
            else " [no CI: 1 seed]"
    return text


def fmt_ci(ci: tuple[float, float] | None, decimals: int) -> str:
    return f"[{fmt(ci[0], decimals)}, {fmt(ci[1], decimals)}]" if ci else "no CI (n<2)"


def md_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    def escape(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    lines = ["| " + " | ".join(escape(h) for h in header) + " |",
             "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
    return lines


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]


def slug(parts: Iterable[str]) -> str:
    text = "_".join(p.split("=", 1)[-1] for p in parts)
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "all"


# ---------------------------------------------------------------------------------------------
# The report of one group


@dataclass
class GroupReport:
    name: str
    slug: str
    variants: list[Variant]
    target: float | None
    target_source: str
    lines_md: list[str] = field(default_factory=list)
    lines_text: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)


def main_table(variants: list[Variant], target: float | None, with_ci: bool):
    header = ["variant", "runs", "diverged", *METRICS, "epochs to target"]
    rows = []
    for variant in variants:
        status = f"{variant.count('completed')}/{len(variant.runs)} completed"
        diverged, finished = variant.divergence
        rate = f"{diverged}/{finished}" if finished else "—"
        cells = [fmt_stat(variant.stats[m], METRIC_DECIMALS[m], with_ci) for m in METRICS]
        rows.append([variant.label, status, rate, *cells, epochs_cell(variant, target)])
    return header, rows


def epochs_cell(variant: Variant, target: float | None) -> str:
    if target is None:
        return "—"
    finished = [r for r in variant.runs if r.status in ("completed", "diverged")]
    reached = [e for e in (epochs_to_target(r, target) for r in finished) if e is not None]
    if not finished:
        return "—"
    mean = f"{np.mean(reached):.1f}" if reached else "never"
    return f"{mean} ({len(reached)}/{len(finished)} reached)"


def default_target(variants: list[Variant]) -> float | None:
    """The worst final mean ELBO among variants: every variant that finished on par with the
    worst one reaches it, and the epoch count then says how fast each got there."""
    means = [v.stats["test/elbo"].mean for v in variants if v.stats["test/elbo"].n]
    return min(means) if means else None


def stability_table(variants: list[Variant]) -> list[str]:
    """param × lr: divergence rate and final ELBO, when some variants differ only in optim.lr."""
    rows: dict[str, dict[float, Variant]] = {}
    for variant in variants:
        row_items = [display_item(i) for i in variant.key
                     if split_override(i)[0] != "optim.lr"]
        lr = as_float(variant.representative_config().get("optim.lr"))
        if lr is None or not any(split_override(i)[0] == "optim.lr" for i in variant.key):
            continue
        rows.setdefault(",".join(row_items) or "(no other overrides)", {})[lr] = variant
    if not any(len(cells) > 1 for cells in rows.values()):
        return []
    lrs = sorted({lr for cells in rows.values() for lr in cells})
    table_rows = []
    for row_label, cells in sorted(rows.items()):
        row = [row_label]
        for lr in lrs:
            variant = cells.get(lr)
            if variant is None:
                row.append("—")
                continue
            diverged, finished = variant.divergence
            elbo = variant.stats["test/elbo"]
            elbo_text = fmt_stat(elbo, 2, with_ci=False) if elbo.n else "no completed run"
            row.append(f"div {diverged}/{finished}; ELBO {elbo_text}")
        table_rows.append(row)
    lines = ["### Learning-rate stability", "",
             "Divergence rate (diverged/finished runs) and final test ELBO (mean ± std over "
             "completed seeds) for each setting and `optim.lr`.", ""]
    return lines + md_table(["variant", *[f"lr={lr:g}" for lr in lrs]], table_rows) + [""]


def equivalence_section(runs: list[Run]) -> list[str]:
    rows = equivalence_rows(runs)
    if not rows or not has_sigma_head_knobs(runs):
        return []
    lines = ["### logvar / logstd equivalence", "",
             "Each logstd run against the logvar run with the same seed and otherwise the same "
             "config. *Expected* follows from the σ-head knobs (`model.sigma_head_scale`, "
             "`model.sigma_head_init_scale`, `optim.sigma_head_lr_mult`); *bitwise* compares "
             "every logged value of " + ", ".join(f"`{t}`" for t in OBJECTIVE_TAGS) + ".", ""]
    table = []
    for row in sorted(rows, key=lambda r: (str(r.logstd.config.get("optim.name")),
                                           r.logstd.name)):
        verdict = "bitwise equal" if row.bitwise else f"differ (first: {row.first_difference})"
        table.append([row.logstd.name, row.logvar.name, str(row.logstd.config.get("optim.name")),
                      row.expected, fmt_small(row.max_abs_elbo), str(row.epochs), verdict])
    lines += md_table(["logstd run", "logvar run", "optimizer", "expected",
                       "max |Δ test/elbo| over epochs", "epochs", "trajectories"], table)
    matched = [r for r in rows if r.expected.startswith("yes")]
    if matched:
        exact = sum(r.bitwise for r in matched)
        worst = max((r.max_abs_elbo for r in matched if r.max_abs_elbo is not None), default=None)
        lines += ["", f"Of {len(matched)} logstd run(s) made equivalent to logvar, {exact} "
                  f"match bitwise; the largest |Δ test/elbo| among them is {fmt_small(worst)}."]
    return lines + [""]


def comparison_section(variants: list[Variant], spec: tuple[str, str | None], rng,
                       resamples: int) -> list[str]:
    baselines = pick_baselines(variants, spec)
    header = f"### Against the baseline `{spec[0]}{'' if spec[1] is None else '=' + spec[1]}`"
    if not baselines:
        has_baseline = any(matches_baseline(v, spec) for v in variants)
        reason = ("every variant here matches the baseline" if has_baseline
                  else "no variant here matches the baseline")
        return [header, "", f"No comparison: {reason}; choose another with `--baseline "
                "KEY=VALUE`.", ""]
    lines = [header, "",
             "Difference of means (variant − baseline) with a 95% bootstrap CI over seeds. "
             "*Beyond seed noise* is yes when the CI excludes 0. Each variant is compared with the "
             "baseline variant closest to it in config (same learning rate, same optimizer, ...).",
             ""]
    rows = []
    for variant in variants:
        if variant.key not in baselines:
            continue
        baseline, ties = baselines[variant.key]
        name = baseline.label + (f" (closest of {ties})" if ties > 1 else "")
        for metric in METRICS:
            result = compare(variant.runs, baseline.runs, metric, rng, resamples)
            decimals = METRIC_DECIMALS[metric]
            rows.append([variant.label, name, metric, fmt(result.difference, decimals),
                         fmt_ci(result.ci, decimals) if result.difference is not None else "—",
                         result.pairing, result.verdict])
    lines += md_table(["variant", "baseline", "metric", "Δ", "95% CI", "pairing",
                       "beyond seed noise?"], rows)
    return lines + [""]


def unfinished_lines(runs: list[Run]) -> list[str]:
    rows = []
    for run in sorted(runs, key=lambda r: r.name):
        if run.status == "completed":
            continue
        detail = {
            "diverged": f"diverged at step {run.summary.get('diverged_step')} (epoch "
                        f"{run.summary.get('diverged_epoch')})"
                        + (f": {run.summary['reason']}" if run.summary.get("reason") else ""),
            "failed": f"failed: {run.summary.get('error', 'no error recorded')}",
            "interrupted": f"interrupted ({run.summary.get('signal', '?')}); resume with "
                           f"`vae-bench resume {run.path}`",
            KILLED: f"killed: its process (pid {run.summary.get('pid')} on "
                    f"{run.summary.get('host')}) ended without writing its end (SIGKILL, out "
                    f"of memory, ...); resume with `vae-bench resume {run.path}`",
            "running": "still running, or killed without a chance to write its end"
                       + (f" (on {run.summary['host']}, which this report cannot check)"
                          if run.summary.get("host") else ""),
            NO_SUMMARY: "no summary.json: never started training, or killed before it",
        }.get(run.status, f"status {run.status!r}")
        rows.append([run.name, run.status, detail])
    return rows


def build_group(name: str, runs: list[Run], options, rng) -> GroupReport:
    variants = group_variants(runs)
    for variant in variants:
        for metric in METRICS:
            values = [v for _, v in seed_values(variant.runs, metric)]
            variant.stats[metric] = Stat(values, bootstrap_mean_ci(values, rng,
                                                                   options.bootstrap))
    if options.target_elbo is not None:
        target, source = options.target_elbo, "set with --target-elbo"
    else:
        target = default_target(variants)
        source = "default: the worst final mean test ELBO among this group's variants"
    report = GroupReport(name, slug(name.split()), variants, target, source)

    header, rows = main_table(variants, target, with_ci=True)
    md = [f"## {name}", "",
          f"{len(runs)} run(s) in {len(variants)} variant(s). Cells: mean ± std over completed "
          "seeds [95% bootstrap CI of the mean]. *diverged*: diverged / (completed + diverged) "
          "runs. *epochs to target*: mean first epoch with test ELBO ≥ target, over the runs "
          "that reached it.", "",
          f"Target ELBO: {fmt(target)} ({source}).", ""]
    md += md_table(header, rows) + [""]
    if any(2 <= v.stats["test/elbo"].n <= 3 for v in variants):
        md += ["Few seeds: over n ≤ 3 seeds a bootstrap CI cannot be wider than the range of the "
               "per-seed values, so read its verdicts as hints, not tests. A variant with one "
               "completed seed gets no CI at all.", ""]
    md += comparison_section(variants, parse_baseline(options.baseline), rng, options.bootstrap)
    md += stability_table(variants)
    md += equivalence_section(runs)
    unfinished = unfinished_lines(runs)
    md += ["### Runs that did not complete", ""]
    md += md_table(["run", "status", "detail"], unfinished) if unfinished else ["None."]
    md.append("")
    report.lines_md = md

    text_header, text_rows = main_table(variants, target, with_ci=False)
    report.lines_text = [f"== {name}  (target ELBO {fmt(target)}, {source.split(':')[0]})",
                         *text_table(text_header, text_rows)]
    for row in unfinished:
        report.lines_text.append(f"  ! {row[0]}: {row[2]}")
    return report


# ---------------------------------------------------------------------------------------------
# Figures


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, also on machines without a display
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure, path: Path) -> Path:
    """Render to a temporary file, then rename: a reader never sees half a PNG."""
    plt = pyplot()
    tmp = path.with_name(f".{path.name}.tmp")
    figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
    os.replace(tmp, path)
    return path


def colors(count: int):
    plt = pyplot()
    cmap = plt.get_cmap("tab10" if count <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(count)]


def legend(axis, count: int) -> None:
    if count:
        axis.legend(fontsize="small" if count <= 8 else "x-small", loc="best",
                    ncol=1 if count <= 10 else 2)


def elbo_figure(report: GroupReport, out: Path) -> Path:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for variant, color in zip(report.variants, colors(len(report.variants))):
        curves = [epoch_curve(run) for run in variant.runs]
        curves = [c for c in curves if c]
        if not curves:
            continue
        epochs = sorted(set().union(*curves))
        per_epoch = [[c[e] for c in curves if e in c] for e in epochs]
        mean = [np.mean(v) for v in per_epoch]
        axis.plot(epochs, mean, color=color, marker="o", ms=3,
                  label=f"{variant.label} (n={len(curves)})")
        axis.fill_between(epochs, [min(v) for v in per_epoch], [max(v) for v in per_epoch],
                          color=color, alpha=0.2, lw=0)
    if report.target is not None:
        axis.axhline(report.target, color="gray", ls="--", lw=0.8, label="target ELBO")
    axis.set_xlabel("epoch")
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.set_ylabel("test ELBO (nats)")
    axis.set_title(f"{report.name}\nmean over seeds; band: min–max over seeds", fontsize="small")
    legend(axis, len(report.variants))
    return save_figure(figure, out / f"elbo_{report.slug}.png")


def gradient_figure(report: GroupReport, out: Path) -> Path:
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True, layout="constrained")
    tags = ("grad/norm_mu_head", "grad/norm_sigma_head")
    drawn = 0
    for variant, color in zip(report.variants, colors(len(report.variants))):
        for axis, tag in zip(axes, tags):
            curves = [c for c in (step_curve(run, tag) for run in variant.runs) if c]
            if not curves:
                continue
            steps = sorted(set().union(*curves))
            mean = [np.mean([c[s] for c in curves if s in c]) for s in steps]
            axis.plot(steps, mean, color=color, lw=1, marker="." if len(steps) < 20 else None,
                      label=variant.label)
            drawn += 1
    for axis, tag in zip(axes, tags):
        axis.set_title(f"{tag} (mean over seeds)", fontsize="small")
        axis.set_xlabel("step")
        if drawn:
            axis.set_yscale("log")
    axes[0].set_ylabel("gradient L2 norm")
    if not drawn:
        axes[0].text(0.5, 0.5, "no gradient norms logged", ha="center", transform=axes[0].transAxes)
    legend(axes[1], len(report.variants) if drawn else 0)
    figure.suptitle(report.name, fontsize="small")
    return save_figure(figure, out / f"grad_norms_{report.slug}.png")


def logvar_histogram(run: Run):
    """The last `posterior/logvar` histogram TensorBoard holds for this run:
    (step, left edges, right edges, counts), or None."""
    if not any(run.path.glob("events.out.tfevents.*")):
        return None
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        accumulator = EventAccumulator(str(run.path), size_guidance={
            "histograms": 0, "scalars": 1, "images": 1, "tensors": 1, "compressedHistograms": 1})
        accumulator.Reload()
        if "posterior/logvar" not in accumulator.Tags().get("histograms", []):
            return None
        event = accumulator.Histograms("posterior/logvar")[-1]
    except Exception:  # a damaged or foreign event file costs this figure, not the report
        return None
    value = event.histogram_value
    right = np.asarray(value.bucket_limit, dtype=float)
    counts = np.asarray(value.bucket, dtype=float)
    if not len(right) or counts.sum() <= 0:
        return None
    left = np.concatenate([[value.min], right[:-1]])
    right = np.minimum(right, max(value.max, left[-1]))
    return event.step, left, right, counts


def log_sigma_percentiles(run: Run) -> np.ndarray | None:
    """Percentiles 0..100 of log σ over the whole test set at the run's last evaluation."""
    values = run.summary.get("posterior/test_log_sigma_percentiles")
    if not isinstance(values, list) or len(values) < 2:
        return None
    array = np.asarray([as_float(v) for v in values], dtype=float)
    return array if np.isfinite(array).all() else None


def sigma_figure(report: GroupReport, out: Path) -> Path:
    """σ at the end of training. Left: the distribution function of log σ over the whole test set
    at the last evaluation (summary.json's percentiles; one thin line per seed, the mean of the
    seeds' percentiles bold), falling back to the last TensorBoard training-batch histogram for
    runs without them. Right: σ min/mean/max of the last logged training batch."""
    plt = pyplot()
    figure, (hist_axis, range_axis) = plt.subplots(
        1, 2, figsize=(12, 1.5 + 0.5 * max(len(report.variants), 6)), layout="constrained",
        gridspec_kw={"width_ratios": [3, 2]})
    steps, drew_hist, drew_cdf, sigmas = set(), False, False, []
    palette = colors(len(report.variants))
    for index, (variant, color) in enumerate(zip(report.variants, palette)):
        percentiles = [p for p in (log_sigma_percentiles(run) for run in variant.runs)
                       if p is not None]
        if percentiles:
            levels = np.linspace(0, 1, len(percentiles[0]))
            for seed_percentiles in percentiles:
                hist_axis.plot(seed_percentiles, levels, color=color, lw=0.6, alpha=0.5)
            hist_axis.plot(np.mean(percentiles, axis=0), levels, color=color, lw=2,
                           label=variant.label)
            drew_cdf = True
            histograms = []
        else:
            histograms = [h for h in (logvar_histogram(run) for run in variant.runs) if h]
        if histograms:
            low = min(h[1].min() for h in histograms) / 2
            high = max(h[2].max() for h in histograms) / 2
            edges = np.linspace(low, high if high > low else low + 1e-6, 60)
            centers = np.concatenate([(h[1] + h[2]) / 4 for h in histograms])
            weights = np.concatenate([h[3] for h in histograms])
            density, _ = np.histogram(centers, bins=edges, weights=weights, density=True)
            hist_axis.stairs(density, edges, color=color, label=variant.label)
            steps.update(h[0] for h in histograms)
            drew_hist = True
        for offset, run in enumerate(variant.runs):
            lo, mean, hi = (run.final(f"posterior/sigma_{k}") for k in ("min", "mean", "max"))
            if mean is None:
                continue
            y = index + (offset - (len(variant.runs) - 1) / 2) * 0.8 / max(len(variant.runs), 1)
            if lo is not None and hi is not None:
                range_axis.hlines(y, lo, hi, color=color, lw=1.5)
                sigmas += [lo, hi]
            range_axis.plot([mean], [y], "o", color=color, ms=4)
    hist_axis.set_xlabel("log σ (encoder posterior)")
    if drew_cdf:
        hist_axis.set_ylabel("fraction of test (example, latent) pairs ≤ x")
        when = "test set at the last evaluation (bold: mean over seeds)"
    else:
        hist_axis.set_ylabel("density (seeds pooled)")
        when = "no σ percentiles in summary.json"
    if steps:
        when += f"; training-batch histogram, step {', '.join(str(s) for s in sorted(steps))}"
    hist_axis.set_title(when, fontsize="small")
    if drew_hist or drew_cdf:
        legend(hist_axis, len(report.variants))
    range_axis.set_yticks(range(len(report.variants)))
    range_axis.set_yticklabels([v.label for v in report.variants], fontsize="x-small")
    if sigmas and min(sigmas) > 0 and max(sigmas) / min(sigmas) > 20:
        range_axis.set_xscale("log")  # σ spanning decades, e.g. a collapsed posterior
    range_axis.set_xlabel("σ: min — mean (dot) — max, one line per seed")
    range_axis.set_title("last logged posterior/sigma_* of a training batch", fontsize="small")
    figure.suptitle(f"{report.name}: σ at the end of training", fontsize="small")
    return save_figure(figure, out / f"sigma_{report.slug}.png")


def final_metrics_figure(report: GroupReport, out: Path) -> Path:
    plt = pyplot()
    figure, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 4.5),
                                layout="constrained")
    labels = [v.label for v in report.variants]
    palette = colors(len(report.variants))
    for axis, metric in zip(axes, METRICS):
        for x, (variant, color) in enumerate(zip(report.variants, palette)):
            stat = variant.stats[metric]
            if not stat.n:
                axis.text(x, 0.5, "no completed run", rotation=90, ha="center", va="center",
                          color="gray", fontsize="x-small", transform=axis.get_xaxis_transform())
                continue
            jitter = np.linspace(-0.15, 0.15, stat.n) if stat.n > 1 else [0.0]
            axis.plot(x + np.asarray(jitter), stat.values, ".", color=color, alpha=0.6)
            if stat.ci:
                error = [[stat.mean - stat.ci[0]], [stat.ci[1] - stat.mean]]
                axis.errorbar([x], [stat.mean], yerr=error, fmt="o", color=color, capsize=4)
            else:
                axis.plot([x], [stat.mean], "o", mfc="none", color=color)
        axis.set_xlim(-0.5, len(labels) - 0.5)
        axis.set_xticks(range(len(labels)))
        axis.set_xticklabels(labels, rotation=45, ha="right", fontsize="x-small")
        axis.set_title(metric, fontsize="small")
    figure.suptitle(f"{report.name}: final values of completed runs. Dots: seeds; bars: 95% "
                    "bootstrap CI of the mean; open circle: 1 seed, no CI", fontsize="small")
    return save_figure(figure, out / f"final_{report.slug}.png")


def draw_figures(report: GroupReport, out: Path) -> list[Path]:
    return [elbo_figure(report, out), gradient_figure(report, out), sigma_figure(report, out),
            final_metrics_figure(report, out)]


# ---------------------------------------------------------------------------------------------
# CSV, Markdown, terminal

CSV_CONFIG_KEYS = ("dataset", "model", "likelihood", "likelihood.param", "param", "optim",
                   "optim.lr", "model.sigma_head_scale", "model.sigma_head_init_scale",
                   "optim.sigma_head_lr_mult")


def csv_text(runs: list[Run], variant_labels: dict[int, str]) -> str:
    override_keys = sorted({split_override(o)[0] for run in runs for o in run.overrides})
    summary_keys = sorted({k for run in runs for k, v in run.summary.items()
                           if k != "status" and not isinstance(v, list | dict)})
    header = ["sweep", "run", "status", "group", "variant", "seed", "overrides",
              *[f"config:{k}" for k in CSV_CONFIG_KEYS],
              *[f"override:{k}" for k in override_keys], *summary_keys]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for run in runs:
        overrides = dict(split_override(o) for o in run.overrides)
        writer.writerow([str(run.sweep), str(run.path.relative_to(run.sweep)), run.status,
                         " ".join(run.group), variant_labels[id(run)], run.seed,
                         " ".join(run.overrides),
                         *[config_choice(run.config, k) for k in CSV_CONFIG_KEYS],
                         *[overrides.get(k, "") for k in override_keys],
                         *[run.summary.get(k, "") for k in summary_keys]])
    return buffer.getvalue()


def figure_lines(report: GroupReport, out: Path) -> list[str]:
    captions = {"elbo": "Test ELBO per epoch", "grad_norms": "μ- and σ-head gradient norms",
                "sigma": "σ at the end of training", "final": "Final metrics per variant"}
    lines = ["### Figures", ""]
    for path in report.figures:
        kind = path.name.removesuffix(f"_{report.slug}.png")
        lines += [f"![{captions.get(kind, kind)}]({path.relative_to(out).as_posix()})", ""]
    return lines


def status_counts(runs: list[Run]) -> str:
    counts = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    order = [s for s in STATUS_ORDER if s in counts] + sorted(set(counts) - set(STATUS_ORDER))
    return ", ".join(f"{counts[s]} {s}" for s in order)


def build(folders: Sequence[Path], out: Path, options) -> dict:
    """Read, analyse and write everything; returns what was written and the terminal text."""
    for folder in folders:
        if not folder.is_dir():
            raise ReportError(f"{folder} is not a folder; pass sweep folders such as "
                              "outputs/sweeps/<date_time>")
    group_by = [k.strip() for k in options.group_by.split(",") if k.strip()]
    runs = load_runs(folders, group_by)
    if not runs:
        raise ReportError("no run folders (holding config.yaml or .hydra/) under "
                          + ", ".join(str(f) for f in folders))
    parse_baseline(options.baseline)
    rng = np.random.default_rng(options.seed)
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)

    reports = []
    for group_key in sorted(groups):
        report = build_group(" ".join(group_key), groups[group_key], options, rng)
        if not options.no_figures:
            report.figures = draw_figures(report, out)
        reports.append(report)

    md = ["# vae-bench report", "",
          "Sweeps: " + ", ".join(f"`{f}`" for f in folders), "",
          f"{len(runs)} run(s): {status_counts(runs)}. Grouped by {', '.join(group_by)}; a "
          "variant is a run's overrides minus `seed`. Baseline: "
          f"`{options.baseline}`. Bootstrap: {options.bootstrap} resamples, seed {options.seed}.",
          ""]
    for report in reports:
        md += report.lines_md
        md += figure_lines(report, out) if report.figures else []
    labels = {id(run): variant.label for report in reports for variant in report.variants
              for run in variant.runs}
    atomic_write_text(out / "report.md", "\n".join(md).rstrip() + "\n")
    atomic_write_text(out / "report.csv", csv_text(runs, labels))
    text = [f"{len(runs)} run(s): {status_counts(runs)}"]
    for report in reports:
        text += ["", *report.lines_text]
    text += ["", f"wrote {out / 'report.md'}, {out / 'report.csv'} and "
             f"{sum(len(r.figures) for r in reports)} figure(s) to {out}"]
    return {"runs": runs, "groups": reports, "text": "\n".join(text)}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vae-bench report",
        description="Compare the runs of one or more sweep folders: report.md, report.csv and "
                    "PNG figures.")
    parser.add_argument("folders", nargs="+", type=Path, help="sweep folders (searched "
                        "recursively for run folders)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the report (default: the first folder)")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE,
                        help="the baseline variant: KEY=VALUE of an override (param=logvar) "
                             "or of a config value (optim.name=sgd), or a variant label as the "
                             "tables print it; default %(default)s")
    parser.add_argument("--target-elbo", type=float, default=None,
                        help="test ELBO for 'epochs to target' (default: per group, the worst "
                             "final mean ELBO among its variants)")
    parser.add_argument("--group-by", default=",".join(DEFAULT_GROUP_BY),
                        help="config keys whose values split runs into separate tables "
                             "(default %(default)s; use dataset,model to compare likelihoods)")
    parser.add_argument("--bootstrap", type=int, default=10000,
                        help="bootstrap resamples (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the bootstrap, so a report is reproducible")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    args = parser.parse_args(list(argv))
    if args.bootstrap < 100:
        parser.error("--bootstrap must be at least 100")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = args.out or args.folders[0]
    try:
        result = build(args.folders, out, args)
    except ReportError as error:
        print(f"vae-bench report: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(result["text"])
