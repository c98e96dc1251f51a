"""Each variant's paired difference to its baseline over training: per epoch, variant − baseline
of test ELBO and of IWAE NLL (at the epochs it was logged), the mean over the seeds both sides
logged that epoch, with a Student-t 95% CI band (stats.paired_t). A curve shows whether a gap
grows, shrinks or changes sign with training, which the final-value tables cannot.

Every run with a logged value counts, whatever its status: an unfinished or diverged run's
epochs before it stopped are real values, and how many seed pairs each point rests on is kept
(`n`) and shown."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vae_bench.report.group import GroupReport
from vae_bench.report.plotting import (
    colors,
    integer_ticks,
    plain_linear,
    plain_log,
    pyplot,
    save_figure,
)
from vae_bench.report.runs import Run, epoch_curve
from vae_bench.report.stats import CONFIDENCE, paired_t
from vae_bench.report.tables import fmt, md_table
from vae_bench.report.variants import METRIC_DECIMALS, Variant

# (tag, axis label): the label says which sign is better
TREND_TAGS = (("test/elbo", "Δ test ELBO (nats; > 0: variant better)"),
              ("test/nll_iwae", "Δ IWAE NLL (nats; < 0: variant better)"))
# The table and report.json add the active units, whether a map keeps latents its baseline loses
# (or the reverse), and the share of test σ within 1% of a bound of its map (where runs log it):
# both show over training, not only at the end.
TABLE_TAGS = (*(tag for tag, _ in TREND_TAGS), "latent/active_units",
              "posterior/test_saturated_frac")
TABLE_DECIMALS = {"posterior/test_saturated_frac": 4}
TABLE_EPOCHS_MAX = 5  # without IWAE checkpoints, the table's epochs are this many, log-spaced
PANELS_MAX = 9  # up to this many variants get a row of panels each; more share one panel per tag
LEGEND_MAX = 40  # variants sharing a panel get a legend up to this many


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


def group_trends(report: GroupReport, tags: Sequence[str] = tuple(dict(TREND_TAGS))
                 ) -> dict[str, list[Trend]]:
    """tag -> the trends of every variant that has a baseline and shares a logged epoch with
    it; only tags with at least one trend."""
    trends = {}
    for tag in tags:
        found = [t for t in (trend(v, b, tag) for v, b in baseline_pairs(report)) if t]
        if found:
            trends[tag] = found
    return trends


# ---- the numbers: report.json and a table at a few epochs --------------------------------------


def trend_json(item: Trend) -> dict:
    return {"variant": item.variant.label, "baseline": item.baseline.label, "tag": item.tag,
            "epochs": item.epochs, "difference": item.mean, "n": item.n,
            "ci_low": [ci[0] if ci else None for ci in item.ci],
            "ci_high": [ci[1] if ci else None for ci in item.ci]}


def table_epochs(trends: dict[str, list[Trend]]) -> list[int]:
    """The epochs with an IWAE estimate where there are several (a study's checkpoints, e.g.
    10, 30, 100, 300); otherwise up to TABLE_EPOCHS_MAX logged epochs, log-spaced, the first and
    the last included."""
    iwae = sorted({e for t in trends.get("test/nll_iwae", []) for e in t.epochs})
    if len(iwae) > 1:
        return iwae
    logged = sorted({e for t in trends.get("test/elbo", []) for e in t.epochs})
    if len(logged) <= TABLE_EPOCHS_MAX:
        return logged
    wanted = np.geomspace(logged[0], logged[-1], TABLE_EPOCHS_MAX)
    return sorted({min(logged, key=lambda e, w=w: abs(math.log(e / w))) for w in wanted})


def trend_cell(item: Trend, epoch: int) -> str:
    if epoch not in item.epochs:
        return "—"
    at = item.epochs.index(epoch)
    decimals = TABLE_DECIMALS.get(item.tag, METRIC_DECIMALS.get(item.tag, 2))
    ci = item.ci[at]
    interval = f" [{fmt(ci[0], decimals)}, {fmt(ci[1], decimals)}]" if ci else ""
    return f"{item.mean[at]:+.{decimals}f}{interval}"


def trend_table_lines(report: GroupReport) -> list[str]:
    """Markdown: each variant − its baseline at a few epochs, per tag, with Student-t CIs over
    the seed pairs. Descriptive: the tested comparisons are the final ones above."""
    trends = group_trends(report, TABLE_TAGS)
    if "test/elbo" not in trends:
        return []
    epochs = table_epochs(trends)
    header = ["variant", "baseline", "tag", "seed pairs", *(f"epoch {e}" for e in epochs)]
    rows = []
    for tag in TABLE_TAGS:
        for item in trends.get(tag, []):
            rows.append([item.variant.label, item.baseline.label, tag, pairs_text(item),
                         *(trend_cell(item, epoch) for epoch in epochs)])
    return ["### Difference to the baseline over training", "",
            f"variant − baseline at epoch …, mean over the seeds paired by seed [Student-t "
            f"{CONFIDENCE:.0%} CI, not adjusted for multiplicity: these describe how a gap "
            "develops; the tested comparisons are the final ones above]. "
            "Every run that logged the epoch counts, finished or not. For test/elbo, "
            "latent/active_units and posterior/test_saturated_frac (the share of test σ within "
            "1% of a bound of the map) > 0 means the variant is higher; for test/nll_iwae < 0 "
            "means the variant is better. —: not logged by both at that epoch.", "",
            *md_table(header, rows),
            ""]


# ---- the figure ---------------------------------------------------------------------------------


def pairs_text(item: Trend) -> str:
    low, high = min(item.n), max(item.n)
    return f"{low}{f'–{high}' if high > low else ''} seed pair{'' if high == 1 else 's'}"


def pair_title(variant: Variant, baseline: Variant, pairs: str) -> str:
    """`param=logstd − param=logvar at optim.lr=0.01 (3 seed pairs)`: what differs, then what the
    two share, wrapped to fit a panel."""
    mine, theirs = variant.label.split(","), baseline.label.split(",")
    shared = [item for item in mine if item in theirs]
    own = ",".join(item for item in mine if item not in shared) or variant.label
    base = ",".join(item for item in theirs if item not in shared) or baseline.label
    text = f"{own} − {base}" + (f" at {','.join(shared)}" if shared else "") + f" ({pairs})"
    return textwrap.fill(text, 72)


def draw_trend(axis, item: Trend, color, label: str | None = None) -> None:
    """The mean difference, its CI as a band, and as error bars where there are few epochs (a
    band between a few points hides a lone interval)."""
    axis.plot(item.epochs, item.mean, color=color, lw=1.2,
              marker="o" if len(item.epochs) <= 30 else None, ms=4, label=label)
    low = np.array([ci[0] if ci else np.nan for ci in item.ci])
    high = np.array([ci[1] if ci else np.nan for ci in item.ci])
    axis.fill_between(item.epochs, low, high, color=color, alpha=0.2, lw=0)
    if len(item.epochs) <= 12:
        mean = np.asarray(item.mean)
        axis.errorbar(item.epochs, mean, yerr=[mean - low, high - mean], fmt="none",
                      ecolor=color, capsize=3, lw=1)


def epoch_axis(axis, epochs: list[int]) -> None:
    epochs = sorted(set(epochs))
    if epochs[-1] >= 30 * epochs[0]:  # a long horizon: a log axis keeps early epochs readable
        axis.set_xscale("log")
        plain_log(axis.xaxis, epochs)
    else:
        integer_ticks(axis.xaxis, epochs)


def baseline_trend_figure(report: GroupReport, out: Path) -> Path | None:
    """variant − baseline per epoch, one column per tag logged (test ELBO; IWAE NLL where some
    epoch has it) and one row per variant, y shared down a column; with more than PANELS_MAX
    variants (an lr grid) one panel per tag holds them all. None without a baseline."""
    trends = group_trends(report)
    if not trends:
        return None
    palette = dict(zip((v.key for v in report.variants), colors(len(report.variants))))
    compared = [v for v in report.variants
                if any(t.variant is v for tag_trends in trends.values() for t in tag_trends)]
    baselines = {t.baseline.label for tag_trends in trends.values() for t in tag_trends}
    rows = len(compared) if len(compared) <= PANELS_MAX else 1
    # one shared row: room below it for the legend, two entries a line
    height = 1.3 + 2.3 * rows
    if rows == 1 and 1 < len(compared) <= LEGEND_MAX:
        height += 0.2 * math.ceil(len(compared) / 2)
    width = 6 * len(trends) if rows > 1 else max(6 * len(trends), 11)  # a legend's long lines
    plt = pyplot()
    figure, axes = plt.subplots(rows, len(trends), figsize=(width, height),
                                layout="constrained", squeeze=False, sharex="col",
                                sharey="col")
    labels = dict(TREND_TAGS)
    for column, (tag, tag_trends) in enumerate(trends.items()):
        by_variant = {id(t.variant): t for t in tag_trends}
        for row in range(rows):
            axis = axes[row][column]
            axis.axhline(0.0, color="0.4", lw=0.8, ls="--")
            if rows == 1 and len(compared) > 1:
                for item in tag_trends:
                    draw_trend(axis, item, palette[item.variant.key],
                               pair_title(item.variant, item.baseline, pairs_text(item)))
                if len(compared) > LEGEND_MAX:
                    axis.text(0.01, 0.01, f"{len(tag_trends)} variants; no legend",
                              transform=axis.transAxes, fontsize="x-small", color="0.3")
            else:
                variant = compared[row]
                item = by_variant.get(id(variant))
                if item is None:
                    axis.text(0.5, 0.5, "no epoch logged by both", ha="center", va="center",
                              transform=axis.transAxes, fontsize="small", color="0.4")
                else:
                    draw_trend(axis, item, palette[variant.key])
                    axis.set_title(pair_title(variant, item.baseline, pairs_text(item)),
                                   fontsize="small")
            axis.set_ylabel(labels[tag], fontsize="small")
            plain_linear(axis.yaxis)
        epoch_axis(axes[-1][column], [e for t in tag_trends for e in t.epochs])
        axes[-1][column].set_xlabel("epoch")
    if rows == 1 and 1 < len(compared) <= LEGEND_MAX:  # below the panels: labels are long
        handles, texts = axes[0][0].get_legend_handles_labels()
        figure.legend(handles, texts, loc="outside lower center", ncol=2, fontsize="x-small")
    baseline_text = next(iter(baselines)) if len(baselines) == 1 else \
        f"for each variant the closest of {len(baselines)} baseline variants"
    title = (f"{report.name}: variant − baseline ({baseline_text}) per epoch, mean over seeds "
             "paired by seed; band (bars): Student-t 95% CI")
    figure.suptitle(textwrap.fill(title, int(width * 13)), fontsize="small")
    return save_figure(figure, out / f"baseline_trend_{report.slug}.png")
