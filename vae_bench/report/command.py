"""`vae-bench report`: read the runs, build each group's report, write report.md, report.csv,
report.json, frontier.csv and the figures, print the main tables."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from vae_bench.report.budget import budget_lines
from vae_bench.report.exports import csv_text, frontier_csv, report_json, status_counts
from vae_bench.report.figures import draw_figures
from vae_bench.report.group import GroupReport, build_group
from vae_bench.report.runs import ReportError, Run, counted, load_runs
from vae_bench.report.tables import duplicate_lines
from vae_bench.report.trends import trend_table_lines
from vae_bench.report.variants import DEFAULT_BASELINE, parse_baseline
from vae_bench.tracking import atomic_write_text

DEFAULT_GROUP_BY = ("dataset", "model", "likelihood")
FIGURE_CAPTIONS = {"elbo": "Test ELBO per epoch",
                   "baseline_trend": "Paired difference to the baseline per epoch",
                   "grad_norms": "μ- and σ-head gradient norms",
                   "sigma": "σ at the end of training", "final": "Final metrics per variant",
                   "frontier": "Final test ELBO against the learning rate"}


def figure_lines(report: GroupReport, out: Path) -> list[str]:
    lines = ["### Figures", ""]
    for path in report.figures:
        kind = path.name.removesuffix(f"_{report.slug}.png")
        lines += [f"![{FIGURE_CAPTIONS.get(kind, kind)}]({path.relative_to(out).as_posix()})",
                  ""]
    return lines


def counts_text(runs: Sequence[Run]) -> str:
    text = ", ".join(f"{n} {status}" for status, n in status_counts(runs).items())
    duplicates = sum(run.duplicate_of is not None for run in runs)
    return text + (f"; {duplicates} duplicate(s) of an earlier run set aside" if duplicates
                   else "")


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
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in counted(runs):
        groups.setdefault(run.group, []).append(run)

    reports = []
    for group_key in sorted(groups):
        report = build_group(" ".join(group_key), groups[group_key], options.baseline,
                             options.target_elbo)
        if not options.no_figures:
            report.figures = draw_figures(report, out)
        reports.append(report)

    written = write_files(folders, out, options, runs, reports)
    text = [f"{len(runs)} run(s): {counts_text(runs)}"]
    for report in reports:
        text += ["", *report.lines_text]
    text += ["", f"wrote {', '.join(str(out / name) for name in written)} and "
             f"{sum(len(r.figures) for r in reports)} figure(s) to {out}"]
    return {"runs": runs, "groups": reports, "text": "\n".join(text)}


def write_files(folders: Sequence[Path], out: Path, options, runs: list[Run],
                reports: list[GroupReport]) -> list[str]:
    md = ["# vae-bench report", "", *budget_lines(counted(runs)),
          "Sweeps: " + ", ".join(f"`{f}`" for f in folders), "",
          f"{len(runs)} run(s): {counts_text(runs)}. Grouped by {options.group_by}; a variant "
          f"is a run's overrides minus `seed`. Baseline: `{options.baseline}`. Statistics: "
          "Student-t intervals and tests over seeds, Holm-adjusted per comparison table; "
          "machine-readable in report.json.", ""]
    md += duplicate_lines([run for run in runs if run.duplicate_of is not None])
    for report in reports:
        md += report.lines_md
        md += trend_table_lines(report)
        md += figure_lines(report, out) if report.figures else []
    labels = {id(run): variant.label for report in reports for variant in report.variants
              for run in variant.runs}
    files = {"report.md": "\n".join(md).rstrip() + "\n",
             "report.csv": csv_text(runs, labels),
             "report.json": report_json(folders, runs, reports, options.baseline)}
    frontier = frontier_csv(reports)
    if frontier is not None:
        files["frontier.csv"] = frontier
    for name, text in files.items():
        atomic_write_text(out / name, text)
    return list(files)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="vae-bench report",
        description="Compare the runs of one or more sweep folders: report.md, report.csv, "
                    "report.json, frontier.csv (lr sweeps) and PNG figures.")
    parser.add_argument("folders", nargs="+", type=Path, help="sweep folders (searched "
                        "recursively for run folders)")
    parser.add_argument("--out", type=Path, default=None,
                        help="where to write the report (default: the first folder)")
    parser.add_argument("--baseline", default=DEFAULT_BASELINE,
                        help="the baseline variant: KEY=VALUE of an override (param=logvar) "
                             "or of a config value (optim.name=sgd), or a variant label as the "
                             "tables print it; default %(default)s")
    parser.add_argument("--target-elbo", type=float, default=None,
                        help="test ELBO for 'epochs to target' (default: per group, the "
                             "baseline's final mean test ELBO)")
    parser.add_argument("--group-by", default=",".join(DEFAULT_GROUP_BY),
                        help="config keys whose values split runs into separate tables "
                             "(default %(default)s; use dataset,model to compare likelihoods)")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    out = args.out or args.folders[0]
    try:
        result = build(args.folders, out, args)
    except ReportError as error:
        print(f"vae-bench report: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(result["text"])
