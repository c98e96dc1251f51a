"""Figures of one group: test ELBO per epoch, each variant's paired difference to its baseline
per epoch, μ/σ-head gradient norms, σ at the end, final metrics per variant, and the
learning-rate frontier. Tick labels stay plain numbers and every
series has markers, so a 1-epoch or 1-seed sweep still reads."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from vae_bench.report.group import GroupReport, metric_labels
from vae_bench.report.plotting import (
    colors,
    integer_ticks,
    legend,
    plain_linear,
    plain_log,
    plain_number,
    pyplot,
    save_figure,
)
from vae_bench.report.runs import Run, as_float, epoch_curve, step_curve
from vae_bench.report.trends import baseline_trend_figure
from vae_bench.report.variants import shown_metrics


def elbo_figure(report: GroupReport, out: Path) -> Path:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5), layout="constrained")
    all_epochs = set()
    for variant, color in zip(report.variants, colors(len(report.variants))):
        curves = [epoch_curve(run) for run in variant.runs]
        curves = [c for c in curves if c]
        if not curves:
            continue
        epochs = sorted(set().union(*curves))
        all_epochs.update(epochs)
        per_epoch = [[c[e] for c in curves if e in c] for e in epochs]
        mean = [np.mean(v) for v in per_epoch]
        axis.plot(epochs, mean, color=color, marker="o", ms=3 if len(epochs) > 3 else 6,
                  label=f"{variant.label} (n={len(curves)})")
        axis.fill_between(epochs, [min(v) for v in per_epoch], [max(v) for v in per_epoch],
                          color=color, alpha=0.2, lw=0)
    if report.target is not None:
        axis.axhline(report.target, color="gray", ls="--", lw=0.8, label="target ELBO")
    axis.set_xlabel("epoch")
    integer_ticks(axis.xaxis, all_epochs)
    plain_linear(axis.yaxis)
    axis.set_ylabel("test ELBO (nats)")
    axis.set_title(f"{report.name}\nmean over seeds; band: min–max over seeds", fontsize="small")
    legend(axis, len(report.variants))
    return save_figure(figure, out / f"elbo_{report.slug}.png")


def gradient_figure(report: GroupReport, out: Path) -> Path:
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharex=True, layout="constrained")
    tags = ("grad/norm_mu_head", "grad/norm_sigma_head")
    drawn, steps_seen, norms = 0, set(), {tag: [] for tag in tags}
    for variant, color in zip(report.variants, colors(len(report.variants))):
        for axis, tag in zip(axes, tags):
            curves = [c for c in (step_curve(run, tag) for run in variant.runs) if c]
            if not curves:
                continue
            steps = sorted(set().union(*curves))
            mean = [np.mean([c[s] for c in curves if s in c]) for s in steps]
            axis.plot(steps, mean, color=color, lw=1, marker="o" if len(steps) < 20 else None,
                      ms=4, label=variant.label)
            drawn += 1
            steps_seen.update(steps)
            norms[tag] += mean
    for axis, tag in zip(axes, tags):
        axis.set_title(f"{tag} (mean over seeds)", fontsize="small")
        axis.set_xlabel("step")
        if drawn:
            axis.set_yscale("log")
            plain_log(axis.yaxis, norms[tag])
            integer_ticks(axis.xaxis, steps_seen)
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


def sigma_rows(report: GroupReport) -> list[tuple[str, object, Run]]:
    """(row label, color, run) per seed with a logged σ, variant by variant: the first row of a
    variant names it and its seed, later rows only their seed."""
    rows = []
    for variant, color in zip(report.variants, colors(len(report.variants))):
        logged = [r for r in variant.runs if r.final("posterior/sigma_mean") is not None]
        for index, run in enumerate(logged):
            label = f"seed {run.seed}"
            rows.append((f"{variant.label}  {label}" if index == 0 else label, color, run))
    return rows


def sigma_range_panel(axis, rows: list[tuple[str, object, Run]]) -> None:
    """σ min/mean/max of the last logged training batch, one labelled row per seed (top down)."""
    sigmas = []
    for y, (_, color, run) in enumerate(rows):
        lo, mean, hi = (run.final(f"posterior/sigma_{k}") for k in ("min", "mean", "max"))
        if lo is not None and hi is not None:
            axis.hlines(y, lo, hi, color=color, lw=1.5)
            sigmas += [lo, hi]
        axis.plot([mean], [y], "o", color=color, ms=5)
    axis.set_yticks(range(len(rows)))
    axis.set_yticklabels([label for label, _, _ in rows], fontsize="x-small")
    for tick, (_, color, _) in zip(axis.get_yticklabels(), rows):
        tick.set_color(color)
    axis.set_ylim(len(rows) - 0.5, -0.5)  # first variant on top, like the legend
    if not rows:
        axis.text(0.5, 0.5, "no posterior/sigma_* in summary.json", ha="center",
                  transform=axis.transAxes)
    if sigmas and min(sigmas) > 0 and max(sigmas) / min(sigmas) > 20:
        axis.set_xscale("log")  # σ spanning decades, e.g. a collapsed posterior
        plain_log(axis.xaxis, sigmas)
    else:
        plain_linear(axis.xaxis)
    axis.set_xlabel("σ: min — mean (dot) — max")
    axis.set_title("last logged posterior/sigma_* of a training batch, per seed",
                   fontsize="small")


def log_sigma_panel(axis, report: GroupReport) -> None:
    """The distribution function of log σ over the test set at the last evaluation (one thin
    line per seed, the mean of the seeds' percentiles bold), falling back to the last
    TensorBoard training-batch histogram for runs without percentiles."""
    steps, drew_hist, drew_cdf = set(), False, False
    for variant, color in zip(report.variants, colors(len(report.variants))):
        percentiles = [p for p in (log_sigma_percentiles(run) for run in variant.runs)
                       if p is not None]
        if percentiles:
            levels = np.linspace(0, 1, len(percentiles[0]))
            for seed_percentiles in percentiles:
                axis.plot(seed_percentiles, levels, color=color, lw=0.6, alpha=0.5)
            axis.plot(np.mean(percentiles, axis=0), levels, color=color, lw=2,
                      label=f"{variant.label} (n={len(percentiles)})")
            drew_cdf = True
            continue
        histograms = [h for h in (logvar_histogram(run) for run in variant.runs) if h]
        if histograms:
            low = min(h[1].min() for h in histograms) / 2
            high = max(h[2].max() for h in histograms) / 2
            edges = np.linspace(low, high if high > low else low + 1e-6, 60)
            centers = np.concatenate([(h[1] + h[2]) / 4 for h in histograms])
            weights = np.concatenate([h[3] for h in histograms])
            density, _ = np.histogram(centers, bins=edges, weights=weights, density=True)
            axis.stairs(density, edges, color=color, label=variant.label)
            steps.update(h[0] for h in histograms)
            drew_hist = True
    axis.set_xlabel("log σ (encoder posterior)")
    if drew_cdf:
        axis.set_ylabel("fraction of test (example, latent) pairs ≤ x")
        when = "test set at the last evaluation (bold: mean over seeds)"
    else:
        axis.set_ylabel("density (seeds pooled)")
        when = "no σ percentiles in summary.json"
    if steps:
        when += f"; training-batch histogram, step {', '.join(str(s) for s in sorted(steps))}"
    axis.set_title(when, fontsize="small")
    plain_linear(axis.xaxis)
    plain_linear(axis.yaxis)
    if drew_hist or drew_cdf:
        legend(axis, len(report.variants))


def sigma_figure(report: GroupReport, out: Path) -> Path:
    """σ at the end of training: log σ over the test set (left), σ range per seed (right)."""
    plt = pyplot()
    rows = sigma_rows(report)
    height = max(4.5, 1.5 + 0.25 * len(rows), 1.5 + 0.3 * len(report.variants))
    figure, (hist_axis, range_axis) = plt.subplots(
        1, 2, figsize=(12, height), layout="constrained", gridspec_kw={"width_ratios": [3, 2]})
    log_sigma_panel(hist_axis, report)
    sigma_range_panel(range_axis, rows)
    figure.suptitle(f"{report.name}: σ at the end of training", fontsize="small")
    return save_figure(figure, out / f"sigma_{report.slug}.png")


def final_metrics_figure(report: GroupReport, out: Path) -> Path:
    plt = pyplot()
    metrics = shown_metrics(report.variants)
    labels_by_metric = metric_labels(report)
    figure, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 4.5),
                                layout="constrained")
    labels = [v.label for v in report.variants]
    palette = colors(len(report.variants))
    for axis, metric in zip(axes, metrics):
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
        # with its k where it is an IWAE estimate: `test/nll_iwae_final (k=5000: seed 0; …)`
        axis.set_title(textwrap.fill(labels_by_metric.get(metric, metric), 36),
                       fontsize="small")
        plain_linear(axis.yaxis)
    figure.suptitle(f"{report.name}: final values of completed runs. Dots: seeds; bars: "
                    "Student-t 95% CI of the mean; open circle: no CI (1 seed, or all seeds "
                    "equal)", fontsize="small")
    return save_figure(figure, out / f"final_{report.slug}.png")


def frontier_panels(rows) -> list[tuple[str, list]]:
    """One panel per optimizer when the settings name one (`optim=sgd,…`): the two learning-rate
    scales differ by orders of magnitude, and one axis would crowd 14 lines."""
    def optimizer(row) -> str:
        return next((item for item in row.variant.split(",") if item.startswith("optim=")), "")

    names = sorted({optimizer(row) for row in rows})
    return [(name, [row for row in rows if optimizer(row) == name]) for name in names]


def frontier_floor(rows) -> float | None:
    """The lowest ELBO the y-axis shows. An lr far past a map's useful range can leave a finite
    but absurd ELBO (−7e12 nats), which would flatten every other line; such points are drawn
    at the bottom edge as ▼ instead. The floor is three times the distance from the best mean
    ELBO to the median one below it, so the range where the maps train stays readable."""
    means = [c.mean_elbo for row in rows for c in row.cells if c.mean_elbo is not None]
    if len(means) < 3:
        return None
    best, median = max(means), float(np.median(means))
    return best - 3 * max(best - median, 1.0) if min(means) < best - 3 * (best - median) else None


def frontier_figure(report: GroupReport, out: Path) -> Path:
    """Final test ELBO (mean over completed seeds) against lr, one line per setting, one panel
    per optimizer. Filled marker: every seed completed at that lr; open: some did not. ▼ at the
    bottom edge: a mean ELBO below the axis (its value beside it). × below the axis: diverged
    runs at that lr, with diverged/runs (a diverged run has no final ELBO to plot)."""
    from matplotlib.ticker import NullLocator
    from matplotlib.transforms import blended_transform_factory

    plt = pyplot()
    panels = frontier_panels(report.frontier)
    figure, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.4),
                                layout="constrained", squeeze=False)
    floor = frontier_floor(report.frontier)
    lrs = sorted({cell.lr for row in report.frontier for cell in row.cells})
    for axis, (panel, rows) in zip(axes[0], panels):
        bottom = blended_transform_factory(axis.transData, axis.transAxes)
        for index, (row, color) in enumerate(zip(rows, colors(len(rows)))):
            label = ",".join(i for i in row.variant.split(",") if i != panel) or row.variant
            points = [c for c in row.cells if c.mean_elbo is not None]
            shown = [max(c.mean_elbo, floor) if floor is not None else c.mean_elbo
                     for c in points]
            axis.plot([c.lr for c in points], shown, color=color, lw=1.2,
                      label=f"{label} (seeds={row.seeds})")
            for cell, value in zip(points, shown):
                off_scale = floor is not None and cell.mean_elbo < floor
                axis.plot([cell.lr], [value], "v" if off_scale else "o", ms=7, color=color,
                          mfc=color if cell.stable else "white", clip_on=False)
            height = 0.025 + 0.03 * index  # a band at the bottom, one row per setting
            for cell in (c for c in row.cells if c.diverged):
                axis.plot([cell.lr], [height], "x", ms=7, mew=2, color=color,
                          transform=bottom, clip_on=False)
        axis.set_xscale("log")
        axis.set_xticks(lrs, [plain_number(lr) for lr in lrs], rotation=45, fontsize="small")
        axis.xaxis.set_minor_locator(NullLocator())
        if len(lrs) == 1:
            axis.set_xlim(lrs[0] / 3, lrs[0] * 3)
        plain_linear(axis.yaxis)
        low, top = axis.get_ylim()
        low = floor if floor is not None else low
        band = 0.03 * (len(rows) + 1)  # the bottom share of the axis that holds the ×s
        axis.set_ylim(low - band / (1 - band) * (top - low), top)
        axis.set_yticks([tick for tick in axis.get_yticks() if low <= tick <= top])
        axis.axhline(low, color="0.7", lw=0.8, ls=":")
        axis.set_xlabel("learning rate (optim.lr); × at the bottom: diverged runs at that lr")
        axis.set_ylabel("final test ELBO (nats), mean over seeds")
        axis.set_title(panel or report.name, fontsize="small")
        axis.plot([], [], "kx", ms=7, mew=2, ls="none", label="some seed diverged")
        axis.plot([], [], "ko", mfc="white", ls="none", label="not every seed completed")
        if floor is not None:
            axis.plot([], [], "kv", ls="none", label=f"mean ELBO below {floor:.0f}")
        legend(axis, len(rows) + 3)
    figure.suptitle(f"{report.name}: stability frontier (filled = every seed completed)",
                    fontsize="small")
    return save_figure(figure, out / f"frontier_{report.slug}.png")


def draw_figures(report: GroupReport, out: Path) -> list[Path]:
    figures = [elbo_figure(report, out), baseline_trend_figure(report, out),
               gradient_figure(report, out), sigma_figure(report, out),
               final_metrics_figure(report, out)]
    if report.frontier:
        figures.append(frontier_figure(report, out))
    return [figure for figure in figures if figure is not None]


