"""Each variant's paired difference to its baseline over training: per epoch, variant − baseline
of test ELBO and of IWAE NLL (at the epochs it was logged), the mean over the seeds both sides
logged that epoch, with a Student-t 95% CI band (stats.paired_t). A curve shows whether a gap
grows, shrinks or changes sign with training, which the final-value tables cannot.

Every run with a logged value counts, whatever its status: an unfinished or diverged run's
epochs before it stopped are real values, and how many seed pairs each point rests on is kept
(`n`) and shown."""

from __future__ import annotations

from dataclasses import dataclass

from vae_bench.report.group import GroupReport
from vae_bench.report.runs import Run, epoch_curve
from vae_bench.report.stats import paired_t
from vae_bench.report.variants import Variant

# (tag, axis label): the y-axis says which sign is better
TREND_TAGS = (("test/elbo", "test ELBO: variant − baseline (nats; > 0: variant better)"),
              ("test/nll_iwae", "IWAE NLL: variant − baseline (nats; < 0: variant better)"))


@dataclass
class Trend:
    """variant − baseline of one tag, per epoch at which some seed pair logged it."""

    variant: Variant
    baseline: Variant
    tag: str
    epochs: list[int]
    mean: list[float]
    ci: list[tuple[float, float] | None]  # None: fewer than 2 pairs, or no spread
    n: list[int]  # seed pairs at that epoch


def curves_by_seed(runs: list[Run], tag: str) -> dict[object, dict[int, float]]:
    """Each seed's curve; a seed with two runs in one variant cannot be paired, so it is left
    out (mark_duplicates sets aside runs of the same config and seed before this)."""
    seeds = [run.seed for run in runs]
    return {run.seed: curve for run in runs
            if seeds.count(run.seed) == 1 and (curve := epoch_curve(run, tag))}


def trend(variant: Variant, baseline: Variant, tag: str) -> Trend | None:
    mine, theirs = curves_by_seed(variant.runs, tag), curves_by_seed(baseline.runs, tag)
    seeds = sorted(set(mine) & set(theirs), key=str)
    epochs = sorted({e for s in seeds for e in mine[s] if e in theirs[s]})
    if not epochs:
        return None
    result = Trend(variant, baseline, tag, epochs, [], [], [])
    for epoch in epochs:
        pairs = [(mine[s][epoch], theirs[s][epoch]) for s in seeds
                 if epoch in mine[s] and epoch in theirs[s]]
        test = paired_t([v for v, _ in pairs], [b for _, b in pairs])
        result.mean.append(test.difference)
        result.ci.append(test.ci)
        result.n.append(len(pairs))
    return result


def baseline_pairs(report: GroupReport) -> list[tuple[Variant, Variant]]:
    """(variant, its baseline) in the order of the report's comparison table."""
    pairs = []
    for comparison in report.comparisons:
        pair = (comparison.variant, comparison.baseline)
        if all(pair[0] is not v for v, _ in pairs):
            pairs.append(pair)
    return pairs


def group_trends(report: GroupReport) -> dict[str, list[Trend]]:
    """tag -> the trends of every variant that has a baseline and shares a logged epoch with
    it; only tags with at least one trend."""
    trends = {}
    for tag, _ in TREND_TAGS:
        found = [t for t in (trend(v, b, tag) for v, b in baseline_pairs(report)) if t]
        if found:
            trends[tag] = found
    return trends
