"""`vae-bench report <folder> [...]`: compare the runs of one or more sweeps.

Every run folder under the given folders is found (a folder holding config.yaml or .hydra/),
grouped by dataset/model/likelihood, and split into variants: a run's overrides minus `seed`
(and minus the keys that only say where or how loudly a job runs). Seeds of one variant are
pooled, also across sweeps; a second run of the same config and seed is set aside and listed.
Written to `--out` (default: the first folder):

  report.csv    one row per run: status, overrides, config essentials, every final metric
  report.md     per group: mean ± std and a Student-t 95% CI over seeds, divergence rate, epochs
                to a target ELBO, paired-t or Welch-t comparisons with a baseline variant
                (Holm-adjusted per table), an lr stability table and frontier, and a
                logvar/logstd equivalence check where the runs allow them
  report.json   the same statistics, machine-readable
  frontier.csv  the stability frontier, when runs sweep `optim.lr`
  *.png         test ELBO per epoch, μ/σ-head gradient norms, σ at the end, final metrics,
                final ELBO against lr

Nothing is dropped silently: runs that diverged, failed, are still running or have no
summary.json are counted and listed. Statistics of final metrics use completed runs only,
because a diverged run keeps the last finite values of an unfinished model.

Stages, one module each: runs (reading run folders), stats (t intervals, tests, Holm),
variants (variants, baselines, comparisons), equivalence, frontier, group (one group's report),
tables (Markdown/text), exports (csv/json), figures, command (the entry point).
"""

from vae_bench.report.command import build, main, parse_args
from vae_bench.report.equivalence import expected_equivalence
from vae_bench.report.runs import KILLED, NO_SUMMARY, ReportError, flatten

__all__ = ["KILLED", "NO_SUMMARY", "ReportError", "build", "expected_equivalence", "flatten",
           "main", "parse_args"]
