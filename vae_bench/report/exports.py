"""Machine-readable outputs: report.csv (one row per run), frontier.csv and report.json."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence

from vae_bench.report.frontier import FRONTIER_COLUMNS
from vae_bench.report.group import GroupReport
from vae_bench.report.runs import STATUS_ORDER, Run, config_choice, split_override
from vae_bench.report.stats import ALPHA, CONFIDENCE, Stat
from vae_bench.report.trends import TABLE_TAGS, group_trends, trend_json
from vae_bench.report.variants import Comparison, Variant, shown_metrics

CSV_CONFIG_KEYS = ("dataset", "model", "likelihood", "likelihood.param", "param", "optim",
                   "optim.lr", "model.sigma_head_scale", "model.sigma_head_init_scale",
                   "optim.sigma_head_lr_mult")


def csv_text(runs: list[Run], variant_labels: dict[int, str]) -> str:
    """Every run folder, duplicates included (with the run they duplicate)."""
    override_keys = sorted({split_override(o)[0] for run in runs for o in run.overrides})
    summary_keys = sorted({k for run in runs for k, v in run.summary.items()
                           if k != "status" and not isinstance(v, list | dict)})
    header = ["sweep", "run", "status", "group", "variant", "seed", "duplicate_of", "overrides",
              *[f"config:{k}" for k in CSV_CONFIG_KEYS],
              *[f"override:{k}" for k in override_keys], *summary_keys]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for run in runs:
        overrides = dict(split_override(o) for o in run.overrides)
        writer.writerow([str(run.sweep), str(run.path.relative_to(run.sweep)), run.status,
                         " ".join(run.group), variant_labels.get(id(run), ""), run.seed,
                         run.duplicate_of.name if run.duplicate_of else "",
                         " ".join(run.overrides),
                         *[config_choice(run.config, k) for k in CSV_CONFIG_KEYS],
                         *[overrides.get(k, "") for k in override_keys],
                         *[run.summary.get(k, "") for k in summary_keys]])
    return buffer.getvalue()


def frontier_csv(reports: Sequence[GroupReport]) -> str | None:
    """frontier.csv with exactly FRONTIER_COLUMNS; None when no group swept the lr. With several
    groups the variant names its group, so rows stay distinguishable."""
    rows = [(report, row) for report in reports for row in report.frontier]
    if not rows:
        return None
    several = len({report.name for report, _ in rows}) > 1
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FRONTIER_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for report, row in rows:
        values = row.as_dict()
        if several:
            values["variant"] = f"{report.name}: {values['variant']}"
        writer.writerow({k: "" if v is None else v for k, v in values.items()})
    return buffer.getvalue()


def status_counts(runs: Sequence[Run]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for run in runs:
        counts[run.status] = counts.get(run.status, 0) + 1
    order = [s for s in STATUS_ORDER if s in counts] + sorted(set(counts) - set(STATUS_ORDER))
    return {status: counts[status] for status in order}


def stat_json(stat: Stat) -> dict:
    return {"n": stat.n, "mean": stat.mean, "std": stat.std,
            "ci_low": stat.ci[0] if stat.ci else None,
            "ci_high": stat.ci[1] if stat.ci else None}


def variant_json(variant: Variant, metrics: Sequence[str]) -> dict:
    diverged, finished = variant.divergence
    return {"variant": variant.label, "overrides": list(variant.key),
            "statuses": status_counts(variant.runs), "diverged": diverged, "finished": finished,
            "seeds": [run.seed for run in variant.runs],
            "metrics": {m: stat_json(variant.stats[m]) for m in metrics}}


def comparison_json(comparison: Comparison) -> dict:
    result = comparison.result
    return {"variant": comparison.variant.label, "baseline": comparison.baseline.label,
            "metric": comparison.metric,
            "n": {"variant": result.n_variant, "baseline": result.n_baseline},
            "difference": result.difference,
            "ci_low": result.ci[0] if result.ci else None,
            "ci_high": result.ci[1] if result.ci else None,
            "p_value": result.p_value, "p_holm": result.p_holm,
            "beyond_noise": result.beyond_noise, "method": result.method}


def group_json(report: GroupReport) -> dict:
    return {"group": report.name, "target_elbo": report.target,
            "target_source": report.target_source, "statuses": status_counts(report.runs),
            "variants": [variant_json(v, shown_metrics(report.variants))
                         for v in report.variants],
            "family": {"comparisons": len(report.comparisons),
                       "tested": sum(c.result.tested for c in report.comparisons),
                       "adjustment": "holm", "alpha": ALPHA},
            "comparisons": [comparison_json(c) for c in report.comparisons],
            # variant − baseline per epoch, paired by seed (the trend figure's numbers)
            "trends": [trend_json(t) for trends in group_trends(report, TABLE_TAGS).values()
                       for t in trends],
            "frontier": [row.as_dict() for row in report.frontier],
            "unfinished": [{"run": run.name, "status": run.status}
                           for run in report.runs if run.status != "completed"]}


def report_json(folders: Sequence, all_runs: Sequence[Run], reports: Sequence[GroupReport],
                baseline: str) -> str:
    document = {
        "sweeps": [str(folder) for folder in folders],
        "runs": len(all_runs), "statuses": status_counts(all_runs),
        "baseline": baseline, "confidence": CONFIDENCE,
        "duplicates": [{"run": run.name, "status": run.status,
                        "duplicate_of": run.duplicate_of.name}
                       for run in all_runs if run.duplicate_of is not None],
        "groups": [group_json(report) for report in reports],
    }
    # allow_nan=False: every statistic is finite or null, and JSON readers choke on NaN.
    return json.dumps(document, indent=2, allow_nan=False, default=str) + "\n"
