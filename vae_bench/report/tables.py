"""The report's tables as Markdown and terminal text: the main table, comparisons with the
baseline, the learning-rate stability table and frontier, the equivalence check, and the runs
that did not complete."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterable, Sequence

from vae_bench.report.equivalence import OBJECTIVE_TAGS, equivalence_rows, has_sigma_head_knobs
from vae_bench.report.frontier import FrontierRow
from vae_bench.report.runs import KILLED, NO_SUMMARY, Run, as_float, split_override
from vae_bench.report.stats import ALPHA, CONFIDENCE, Stat, fisher_exact_p, holm
from vae_bench.report.variants import (
    METRIC_DECIMALS,
    Comparison,
    Variant,
    display_item,
    mean_epochs_to_target,
    shown_metrics,
)
from vae_bench.tracking import stale_since

PAIRING_STATEMENT = (
    "Pairing by seed is valid only because runs of the same seed share their initial weights, "
    "data order and reparameterization noise ε across variants: vae-bench draws all three from "
    "`seed`. Runs of a variant that does not (another dataset size, batch size, or model shape) "
    "are not paired samples, whatever their seed says.")


def fmt(value: float | None, decimals: int = 2) -> str:
    return "—" if value is None else f"{value:.{decimals}f}"


def fmt_small(value: float | None) -> str:
    """Differences that may be exactly 0 or 1e-6: three significant digits, not fixed decimals."""
    return "—" if value is None else f"{value:.3g}"


def fmt_p(value: float | None) -> str:
    if value is None:
        return "—"
    return f"{value:.1e}" if value < 0.001 else f"{value:.3f}"


def fmt_stat(stat: Stat, decimals: int, with_ci: bool = True) -> str:
    if stat.n == 0:
        return "—"
    text = fmt(stat.mean, decimals)
    text += f" ± {fmt(stat.std, decimals)}" if stat.std is not None else " (n=1)"
    if with_ci:
        text += f" {fmt_ci(stat.ci, decimals)}" if stat.ci else f" [no CI: {stat.no_ci_reason}]"
    return text


def fmt_ci(ci: tuple[float, float] | None, decimals: int) -> str:
    return f"[{fmt(ci[0], decimals)}, {fmt(ci[1], decimals)}]" if ci else "—"


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
# Main table


def main_table(variants: list[Variant], target: float | None, with_ci: bool,
               metric_labels: dict[str, str] | None = None):
    """`metric_labels` renames metric columns, e.g. `test/nll_iwae (k=1000)`."""
    metrics = shown_metrics(variants)
    labels = [(metric_labels or {}).get(metric, metric) for metric in metrics]
    target_column = "epochs to target" if target is None else f"epochs to ELBO ≥ {fmt(target)}"
    header = ["variant", "runs", "diverged", *labels, target_column]
    rows = []
    for variant in variants:
        status = f"{variant.count('completed')}/{len(variant.runs)} completed"
        diverged, finished = variant.divergence
        rate = f"{diverged}/{finished}" if finished else "—"
        cells = [fmt_stat(variant.stats[m], METRIC_DECIMALS[m], with_ci) for m in metrics]
        rows.append([variant.label, status, rate, *cells, epochs_cell(variant, target)])
    return header, rows


def epochs_cell(variant: Variant, target: float | None) -> str:
    mean, reached, finished = mean_epochs_to_target(variant, target)
    if target is None or not finished:
        return "—"
    return f"{'never' if mean is None else f'{mean:.1f}'} ({reached}/{finished} reached)"


def few_seeds_note(variants: list[Variant]) -> list[str]:
    if not any(2 <= v.stats["test/elbo"].n <= 3 for v in variants):
        return []
    return ["Few seeds: a t interval over n seeds scales the spread by t(n−1), 12.7 at n = 2 and "
            "4.30 at n = 3, so these intervals are wide by design; they still cover the mean "
            "95% of the time, which a bootstrap over so few seeds does not. A variant with one "
            "completed seed gets no CI at all.", ""]


# ---------------------------------------------------------------------------------------------
# Against the baseline


def comparison_section(comparisons: list[Comparison], spec: tuple[str, str | None],
                       has_baseline: bool) -> list[str]:
    header = f"### Against the baseline `{spec[0]}{'' if spec[1] is None else '=' + spec[1]}`"
    if not comparisons:
        reason = ("every variant here matches the baseline" if has_baseline
                  else "no variant here matches the baseline")
        return [header, "", f"No comparison: {reason}; choose another with `--baseline "
                "KEY=VALUE`.", ""]
    lines = [header, ""]
    without_runs = sorted({c.baseline.label for c in comparisons
                           if not c.baseline.count("completed")})
    if without_runs:
        lines += [f"The baseline {', '.join(f'`{label}`' for label in without_runs)} has no "
                  "completed run, so no metric is compared with it; divergence still is "
                  "(below).", ""]
    with_runs = [c for c in comparisons if c.baseline.label not in without_runs]
    if with_runs:
        lines += metric_comparisons(with_runs)
    return lines + divergence_comparisons(comparisons)


def metric_comparisons(comparisons: list[Comparison]) -> list[str]:
    tested = sum(c.result.tested for c in comparisons)
    paired = any(c.result.paired for c in comparisons)
    compared = len({c.variant.key for c in comparisons})
    metrics = len({c.metric for c in comparisons})
    lines = [f"Difference of means (variant − baseline) over completed seeds, with a Student-t "
             f"{CONFIDENCE:.0%} CI and a two-sided p-value. *paired t*: both sides have the same "
             "seeds, and the test is on the per-seed differences; *Welch t*: the seeds differ, "
             "so the sides are compared unpaired, with unequal variances (Welch–Satterthwaite "
             "degrees of freedom). *n*: seed pairs, or seeds of variant vs baseline. Each "
             "variant is compared with the baseline variant closest to it in config (same "
             "learning rate, same optimizer, ...).", "",
             f"Multiple comparisons: the family is this table, {compared} variant(s) × "
             f"{metrics} metrics, of which {tested} could be tested. *p (Holm)* is the "
             f"Holm–Bonferroni adjusted p-value over those {tested}; *beyond seed noise* is yes "
             f"only when p (Holm) < {ALPHA}.", ""]
    if paired:
        lines += [PAIRING_STATEMENT, ""]
    rows = []
    for comparison in comparisons:
        result, decimals = comparison.result, METRIC_DECIMALS[comparison.metric]
        baseline = comparison.baseline.label + (f" (closest of {comparison.ties})"
                                                if comparison.ties > 1 else "")
        n = (f"{result.n_variant} pairs" if result.paired
             else f"{result.n_variant} vs {result.n_baseline}")
        rows.append([comparison.variant.label, baseline, comparison.metric, result.method, n,
                     fmt(result.difference, decimals), fmt_ci(result.ci, decimals),
                     fmt_p(result.p_value), fmt_p(result.p_holm), comparison.verdict])
    lines += md_table(["variant", "baseline", "metric", "method", "n", "Δ",
                       f"{CONFIDENCE:.0%} CI", "p", "p (Holm)", "beyond seed noise?"], rows)
    return lines + [""]


def divergence_comparisons(comparisons: list[Comparison]) -> list[str]:
    """Diverged vs completed runs, each variant against its baseline (Fisher's exact test, Holm
    over the variants); only where some run of them diverged."""
    pairs = {c.variant.key: (c.variant, c.baseline) for c in comparisons
             if c.variant.divergence[1] and c.baseline.divergence[1]}
    if not any(v.divergence[0] or b.divergence[0] for v, b in pairs.values()):
        return []
    p_values = [fisher_exact_p(*v.divergence, *b.divergence) for v, b in pairs.values()]
    rows = [[v.label, b.label, f"{v.divergence[0]}/{v.divergence[1]}",
             f"{b.divergence[0]}/{b.divergence[1]}", fmt_p(p), fmt_p(p_holm),
             "yes" if p_holm < ALPHA else "no"]
            for (v, b), p, p_holm in zip(pairs.values(), p_values, holm(p_values))]
    return ["Divergence (diverged / finished runs), each variant against its baseline: Fisher's "
            "exact test, two-sided, Holm-adjusted over the variants of this table.", "",
            *md_table(["variant", "baseline", "diverged", "baseline diverged", "p (Fisher)",
                       "p (Holm)", "beyond seed noise?"], rows), ""]


# ---------------------------------------------------------------------------------------------
# Learning rates


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


def fmt_lr(lr: float | None) -> str:
    return "—" if lr is None else f"{lr:g}"


def frontier_section(rows: list[FrontierRow]) -> list[str]:
    if not rows:
        return []
    lines = ["### Stability frontier", "",
             "Per setting (every override but `seed` and `optim.lr`): *max stable lr*, the "
             "largest lr at which every seed completed; *min diverged lr*, the smallest at which "
             "any seed diverged; *monotone*: no lr with every seed completed lies above an lr "
             "where a seed diverged; *best lr* / *best test ELBO*: the best mean final test ELBO "
             "among the fully stable lrs. \"—\": no such lr.", ""]
    table = []
    for row in rows:
        values = row.as_dict()
        monotone = "yes" if row.monotone else "**NO**"
        table.append([row.variant, fmt_lr(values["max_stable_lr"]),
                      fmt_lr(values["min_diverged_lr"]), monotone, fmt_lr(values["best_lr"]),
                      fmt(values["best_test_elbo"]), str(row.seeds)])
    lines += md_table(["variant", "max stable lr", "min diverged lr", "monotone", "best lr",
                       "best test ELBO", "seeds"], table)
    for row in rows:
        if not row.monotone:
            lines += ["", f"**Not monotone: `{row.variant}`** completed every seed at lr="
                      f"{fmt_lr(row.max_stable_lr)}, above lr={fmt_lr(row.min_diverged_lr)} "
                      "where a seed diverged: stability is not a threshold in lr here; per lr "
                      "(diverged/runs): " + ", ".join(f"{c.lr:g}: {c.diverged}/{len(c.runs)}"
                                                      for c in row.cells) + "."]
    return lines + [""]


# ---------------------------------------------------------------------------------------------
# Equivalence, unfinished runs


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


def unfinished_detail(run: Run) -> str:
    summary = run.summary
    return {
        "diverged": f"diverged at step {summary.get('diverged_step')} (epoch "
                    f"{summary.get('diverged_epoch')})"
                    + (f": {summary['reason']}" if summary.get("reason") else ""),
        "failed": f"failed: {summary.get('error', 'no error recorded')}",
        "interrupted": f"interrupted ({summary.get('signal', '?')}); resume with "
                       f"`vae-bench resume {run.path}`",
        KILLED: killed_detail(run),
        "running": running_detail(summary),
        NO_SUMMARY: "no summary.json: never started training, or killed before it",
    }.get(run.status, f"status {run.status!r}")


def clock(unix_time: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(unix_time))


def killed_detail(run: Run) -> str:
    summary = run.summary
    resume = f"resume with `vae-bench resume {run.path}`"
    beat = stale_since(summary) if summary.get("status") == "running" else None
    if beat is not None:
        return (f"stale since {clock(beat)}: its process (pid {summary.get('pid')} on "
                f"{summary.get('host')}) stopped renewing its heartbeat, so it is gone; {resume}")
    if summary.get("slurm_state"):
        return (f"killed: its SLURM job {summary.get('slurm_job')} ended "
                f"{summary['slurm_state']} without returning (out of memory, killed, node "
                f"lost); {resume}")
    return (f"killed: its process (pid {summary.get('pid')} on {summary.get('host')}) ended "
            f"without writing its end (SIGKILL, out of memory, ...); {resume}")


def running_detail(summary: dict) -> str:
    pid, host = summary.get("pid"), summary.get("host")
    if host is None:
        return "still running, or killed without a chance to write its end"
    if host == socket.gethostname():  # process_gone found the process alive
        return f"still running (pid {pid} on {host}, this host)"
    beat = summary.get("heartbeat")
    if isinstance(beat, (int, float)):
        return f"still running on {host} (pid {pid}): its last heartbeat was at {clock(beat)}"
    return (f"still running, or killed without a chance to write its end (on {host}, which "
            "this report cannot check: the run predates heartbeats)")


def unfinished_rows(runs: list[Run]) -> list[list[str]]:
    return [[run.name, run.status, unfinished_detail(run)]
            for run in sorted(runs, key=lambda r: r.name) if run.status != "completed"]


def duplicate_lines(duplicates: list[Run]) -> list[str]:
    if not duplicates:
        return []
    lines = ["## Duplicates set aside", "",
             "Runs with the same config and seed as an earlier run (by folder path): the same "
             "measurement again, not another seed, so only the first one counts.", ""]
    rows = [[run.name, run.status, run.duplicate_of.name] for run in duplicates]
    return lines + md_table(["run set aside", "status", "duplicate of (counted)"], rows) + [""]
