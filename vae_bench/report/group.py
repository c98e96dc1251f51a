"""The report of one group (one dataset/model/likelihood): its variants, their comparisons with
the baseline, the learning-rate frontier, and the Markdown and terminal text of it all."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from vae_bench.report.budget import iwae_final_label, iwae_metric_label
from vae_bench.report.frontier import FrontierRow, frontier_rows
from vae_bench.report.runs import Run
from vae_bench.report.tables import (
    comparison_section,
    equivalence_section,
    few_seeds_note,
    fmt,
    frontier_section,
    main_table,
    md_table,
    slug,
    stability_table,
    text_table,
    unfinished_rows,
)
from vae_bench.report.variants import (
    Comparison,
    Variant,
    baseline_target,
    compare_group,
    group_variants,
    matches_baseline,
    parse_baseline,
)


@dataclass
class GroupReport:
    name: str
    slug: str
    runs: list[Run]  # counted runs, duplicates set aside
    variants: list[Variant]
    target: float | None
    target_source: str
    comparisons: list[Comparison]
    frontier: list[FrontierRow]
    lines_md: list[str] = field(default_factory=list)
    lines_text: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)


def build_group(name: str, runs: list[Run], baseline: str, target_elbo: float | None
                ) -> GroupReport:
    variants = group_variants(runs)
    spec = parse_baseline(baseline)
    if target_elbo is not None:
        target, source = target_elbo, "set with --target-elbo"
    else:
        target, source = baseline_target(variants, spec)
    report = GroupReport(name, slug(name.split()), runs, variants, target, source,
                         compare_group(variants, spec), frontier_rows(runs))
    has_baseline = any(matches_baseline(v, spec) for v in variants)
    report.lines_md = group_markdown(report, spec, has_baseline)
    report.lines_text = group_text(report)
    return report


def group_markdown(report: GroupReport, spec: tuple[str, str | None],
                   has_baseline: bool) -> list[str]:
    header, rows = main_table(report.variants, report.target, with_ci=True,
                              metric_labels=metric_labels(report))
    md = [f"## {report.name}", "",
          f"{len(report.runs)} run(s) in {len(report.variants)} variant(s). Cells: mean ± std "
          "over completed seeds [Student-t 95% CI of the mean]. *diverged*: diverged / "
          "(completed + diverged) runs. *epochs to ELBO ≥ target*: mean first epoch with test "
          "ELBO ≥ target, over the runs that reached it (of the finished runs).", "",
          f"Target ELBO: {fmt(report.target)} ({report.target_source}).", ""]
    md += md_table(header, rows) + [""]
    md += few_seeds_note(report.variants)
    md += comparison_section(report.comparisons, spec, has_baseline)
    md += stability_table(report.variants)
    md += frontier_section(report.frontier)
    md += equivalence_section(report.runs)
    unfinished = unfinished_rows(report.runs)
    md += ["### Runs that did not complete", ""]
    md += md_table(["run", "status", "detail"], unfinished) if unfinished else ["None."]
    return md + [""]


def metric_labels(report: GroupReport) -> dict[str, str]:
    return {"test/nll_iwae": iwae_metric_label(report.runs),
            "test/nll_iwae_final": iwae_final_label(report.runs)}


def group_text(report: GroupReport) -> list[str]:
    header, rows = main_table(report.variants, report.target, with_ci=False,
                              metric_labels=metric_labels(report))
    lines = [f"== {report.name}  (target ELBO {fmt(report.target)}, "
             f"{report.target_source.split(':')[0]})", *text_table(header, rows)]
    lines += [f"  ! {row[0]}: {row[2]}" for row in unfinished_rows(report.runs)]
    lines += [f"  ! stability not monotone in lr: {row.variant} (see report.md)"
              for row in report.frontier if not row.monotone]
    return lines
