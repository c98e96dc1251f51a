"""`vae-bench report` on run folders written by hand: statuses, seeds, CIs, baselines, tables,
figures. Nothing here trains; see test_sweeps.py for reports on real sweeps."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from vae_bench import report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def make_run(sweep: Path, overrides: list[str], *, status: str | None = "completed",
             curve: list[float] | None = None, dataset: str = "mnist", model: str = "mlp",
             likelihood: str = "bernoulli", optim: str = "adam", lr: float = 1e-3,
             head: dict | None = None, extra: dict | None = None, folder: str | None = None,
             hydra_only: bool = False) -> Path:
    """One run folder as `vae-bench train -m` leaves it. `curve` is the test ELBO per epoch
    (its last value is the final one); `status=None` leaves summary.json out."""
    values = dict(o.split("=", 1) for o in overrides)
    seed = int(values.get("seed", 0))
    param = values.get("param", "logvar")
    lr = float(values.get("optim.lr", lr))
    head = head or {}
    config = {
        "dataset": {"name": dataset}, "param": {"name": param},
        "model": {"name": model, "sigma_head_scale": head.get("scale", 1.0),
                  "sigma_head_init_scale": head.get("init", 1.0)},
        "likelihood": {"name": likelihood, "param": "logvar"},
        "optim": {"name": optim, "lr": lr, "weight_decay": 0.0, "grad_clip": None,
                  "sigma_head_lr_mult": head.get("lr_mult", 1.0)},
        "seed": seed, "trainer": {"epochs": 3}, "eval": {"iwae_k": 1000},
    }
    run = sweep / (folder or ",".join(o for o in overrides))
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    if hydra_only:
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    else:
        (run / "config.yaml").write_text(yaml.safe_dump(config))
    curve = curve or []
    records = []
    for epoch, elbo in enumerate(curve, start=1):
        step = 10 * epoch
        records.append({"step": step - 10, "epoch": epoch, "grad/norm_mu_head": 1.0 + epoch,
                        "grad/norm_sigma_head": 0.5 * epoch, "posterior/sigma_mean": 0.5,
                        "posterior/sigma_min": 0.1, "posterior/sigma_max": 0.9})
        records.append({"step": step, "epoch": epoch, "test/elbo": elbo, "test/kl": 20.0 + seed,
                        "test/recon_nll": -elbo - 20.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if status is not None:
        summary = {"status": status, "step": 10 * len(curve), "epoch": len(curve)}
        if status == "completed" and curve:
            summary.update({"test/elbo": curve[-1], "test/nll_iwae": -curve[-1] - 3.0,
                            "test/kl": 20.0 + seed, "latent/active_units": 10.0 + seed,
                            "posterior/sigma_mean": 0.5, "posterior/sigma_min": 0.1,
                            "posterior/sigma_max": 0.9})
        summary.update(extra or {})
        (run / "summary.json").write_text(json.dumps(summary))
    return run


def run_report(capsys, *args: str) -> str:
    report.main([str(a) for a in args])
    return capsys.readouterr().out


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def group_text(markdown: str, group: str) -> str:
    """The text of one group's `## ` part of report.md."""
    start = markdown.index(f"## {group}")
    end = markdown.find("\n## ", start + 3)
    return markdown[start:end if end >= 0 else None]


def section(markdown: str, title: str) -> str:
    """The text of one `###` section of one group."""
    start = markdown.index(title)
    end = markdown.find("\n### ", start + len(title))
    return markdown[start:end if end >= 0 else None]


def table_rows(markdown: str, first_cell: str) -> list[list[str]]:
    rows = []
    for line in markdown.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if line.startswith("|") and cells[0] == first_cell:
            rows.append(cells)
    return rows


@pytest.fixture
def two_sweeps(tmp_path: Path) -> tuple[Path, Path]:
    """Sweep A: logvar, logstd (one seed diverged), sigmoid_bounded (indistinguishable from
    logvar), softplus_std (one seed), natural (no summary.json). Sweep B: seed 3 of logvar and
    sigmoid_bounded, and a CIFAR group with a failed run."""
    a, b = tmp_path / "sweep_a", tmp_path / "sweep_b"
    logvar_final = {0: -100.0, 1: -100.5, 2: -99.5, 3: -100.2}
    for seed in (0, 1, 2):
        make_run(a, ["param=logvar", f"seed={seed}"], curve=[-130, -110, logvar_final[seed]])
    make_run(a, ["param=logstd", "seed=0"], curve=[-140, -120, -105.0])
    make_run(a, ["param=logstd", "seed=1"], curve=[-140, -120, -105.5])
    make_run(a, ["param=logstd", "seed=2"], status="diverged", curve=[-130, -120],
             extra={"diverged_step": 17, "diverged_epoch": 3})
    for seed, offset in ((0, 1.0), (1, -1.0), (2, 0.5)):
        make_run(a, ["param=sigmoid_bounded", f"seed={seed}"],
                 curve=[-130, -110, logvar_final[seed] + offset])
    make_run(a, ["param=softplus_std", "seed=0"], curve=[-125, -108, -101.0])
    make_run(a, ["param=natural", "seed=0"], status=None, curve=[-150], hydra_only=True)
    make_run(b, ["param=logvar", "seed=3"], curve=[-130, -110, logvar_final[3]])
    make_run(b, ["param=sigmoid_bounded", "seed=3"], curve=[-130, -110, logvar_final[3] - 0.7])
    make_run(b, ["param=logvar", "seed=0"], dataset="cifar10", model="conv",
             likelihood="gaussian_shared", curve=[-900, -850, -800])
    make_run(b, ["param=logstd", "seed=0"], dataset="cifar10", model="conv",
             likelihood="gaussian_shared", status="failed", curve=[-900],
             extra={"error": "RuntimeError: boom"})
    (a / "multirun.yaml").write_text("hydra: {}\n")
    (a / ".submitit" / "123").mkdir(parents=True)  # submitit's own files are not runs
    return a, b


def test_report_of_two_sweeps(two_sweeps, capsys) -> None:
    a, b = two_sweeps
    out = run_report(capsys, a, b)

    rows = read_csv(a / "report.csv")
    assert len(rows) == 15  # every run folder, none dropped, none invented
    by_run = {(Path(r["sweep"]).name, r["run"]): r for r in rows}
    assert by_run[("sweep_a", "param=logstd,seed=2")]["status"] == "diverged"
    assert by_run[("sweep_a", "param=logstd,seed=2")]["diverged_step"] == "17"
    assert by_run[("sweep_a", "param=natural,seed=0")]["status"] == report.NO_SUMMARY
    assert by_run[("sweep_b", "param=logstd,seed=0")]["error"] == "RuntimeError: boom"
    completed = by_run[("sweep_a", "param=logvar,seed=1")]
    assert completed["status"] == "completed" and float(completed["test/elbo"]) == -100.5
    assert completed["override:param"] == "logvar" and completed["seed"] == "1"
    assert completed["variant"] == "param=logvar"
    assert completed["group"] == "dataset=mnist model=mlp likelihood=bernoulli"

    md = (a / "report.md").read_text()
    mnist = group_text(md, "dataset=mnist model=mlp likelihood=bernoulli")
    table = mnist[:mnist.index("### ")]  # the main table comes before the sections
    main = {r[0]: r for name in ("logvar", "logstd", "softplus_std", "natural")
            for r in table_rows(table, f"param={name}")}
    # Seeds of one variant are pooled across the two sweeps: logvar has seeds 0-3.
    assert main["param=logvar"][1] == "4/4 completed"
    assert main["param=logvar"][3] == "-100.05 ± 0.42 [-100.72, -99.38]"  # ± t(3)·s/√4
    assert main["param=logstd"][1:3] == ["2/3 completed", "1/3"]  # divergence rate 1 of 3
    assert main["param=natural"][1] == "0/1 completed"
    # One seed: a mean, and plainly no CI.
    assert main["param=softplus_std"][3] == "-101.00 (n=1) [no CI: 1 seed]"

    # Default target: the baseline's final mean ELBO (logvar, -100.05), named in the column.
    # logvar's seeds 0 and 2 end above it at epoch 3; logstd and softplus_std never get there.
    assert "Target ELBO: -100.05 (default: the final mean test ELBO of the baseline " \
        "`param=logvar`" in mnist
    header = table_rows(table, "variant")[0]
    assert header[-1] == "epochs to ELBO ≥ -100.05"
    assert header[4] == "test/nll_iwae (k=1000)"  # an IWAE estimate names its k
    assert main["param=logvar"][-1] == "3.0 (2/4 reached)"
    assert main["param=logstd"][-1] == "never (0/3 reached)"
    assert main["param=softplus_std"][-1] == "never (0/1 reached)"

    comparison = section(mnist, "### Against the baseline `param=logvar`")
    verdicts = {(r[0], r[2]): r for r in table_rows(comparison, "param=logstd")
                + table_rows(comparison, "param=sigmoid_bounded")
                + table_rows(comparison, "param=softplus_std")}
    # Columns: variant, baseline, metric, method, n, Δ, CI, p, p (Holm), beyond seed noise?
    logstd_elbo = verdicts[("param=logstd", "test/elbo")]
    assert logstd_elbo[3:6] == ["Welch t", "2 vs 4", "-5.20"]  # its seeds differ from logvar's
    assert logstd_elbo[9] == "yes: variant worse"
    assert verdicts[("param=logstd", "test/nll_iwae")][9] == "yes: variant worse"
    sigmoid_elbo = verdicts[("param=sigmoid_bounded", "test/elbo")]
    assert sigmoid_elbo[3:5] == ["paired t", "4 pairs"]
    assert sigmoid_elbo[9] == "no"
    low, high = (float(x) for x in sigmoid_elbo[6].strip("[]").split(", "))
    assert low < 0 < high
    # Same seeds, same KL per seed: every pair differs by exactly 0, there is nothing to test.
    assert verdicts[("param=sigmoid_bounded", "test/kl")][9].startswith("unknown: no test (every")
    softplus = verdicts[("param=softplus_std", "test/elbo")]
    assert softplus[6:9] == ["—", "—", "—"]
    assert softplus[9] == "unknown: no test (1 seed on a side, its spread unknown)"
    assert "Pairing by seed is valid only because runs of the same seed share" in comparison
    assert "the family is this table, 4 variant(s) × 4 metrics, of which 6 could be tested" \
        in comparison

    unfinished = section(mnist, "### Runs that did not complete")
    assert "sweep_a/param=logstd,seed=2 | diverged | diverged at step 17 (epoch 3)" in unfinished
    assert "sweep_a/param=natural,seed=0 | no_summary" in unfinished
    cifar = group_text(md, "dataset=cifar10")
    assert "sweep_b/param=logstd,seed=0 | failed | failed: RuntimeError: boom" in cifar
    assert "nan" not in md.lower()

    for group in ("mnist_mlp_bernoulli", "cifar10_conv_gaussian_shared"):
        for kind in ("elbo", "grad_norms", "sigma", "final"):
            png = a / f"{kind}_{group}.png"
            assert png.read_bytes()[:8] == PNG_MAGIC, png
            assert f"]({png.name})" in md
    assert not list(a.glob(".*.tmp"))  # atomic writes leave no temporary files behind

    # The terminal gets the main table of each group and every run that did not complete.
    assert "15 run(s): 12 completed, 1 diverged, 1 failed, 1 no_summary" in out
    assert "param=softplus_std" in out and "test/nll_iwae" in out
    assert "! sweep_a/param=logstd,seed=2: diverged at step 17" in out
    assert "! sweep_a/param=natural,seed=0: no summary.json" in out


def test_out_folder_and_target_option(two_sweeps, tmp_path: Path, capsys) -> None:
    a, _ = two_sweeps
    out_dir = tmp_path / "elsewhere"
    run_report(capsys, a, "--out", out_dir, "--target-elbo", "-101.2", "--no-figures")
    md = (out_dir / "report.md").read_text()
    assert not (a / "report.md").exists()
    assert "Target ELBO: -101.20 (set with --target-elbo)" in md
    assert table_rows(md, "param=logvar")[0][-1] == "3.0 (3/3 reached)"  # -99.5..-100.5
    assert table_rows(md, "param=softplus_std")[0][-1] == "3.0 (1/1 reached)"
    assert table_rows(md, "param=logstd")[0][-1] == "never (0/3 reached)"
    assert not list(out_dir.glob("*.png"))


def test_lr_stability_table_and_baseline_at_the_same_lr(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "lr"
    for param in ("logvar", "logstd"):
        for lr in ("0.001", "0.1"):
            for seed in (0, 1):
                diverges = param == "logstd" and lr == "0.1" and seed == 1
                shift = {"0.001": 0.0, "0.1": -10.0}[lr] + (-2.0 if param == "logstd" else 0.0)
                make_run(sweep, [f"param={param}", f"optim.lr={lr}", f"seed={seed}"],
                         status="diverged" if diverges else "completed",
                         curve=[-120 + shift, -100 + shift + 0.1 * seed])
    run_report(capsys, sweep, "--no-figures")
    md = (sweep / "report.md").read_text()
    stability = section(md, "### Learning-rate stability")
    assert "| variant | lr=0.001 | lr=0.1 |" in stability
    (logstd,) = table_rows(stability, "param=logstd")
    assert logstd[1] == "div 0/2; ELBO -101.95 ± 0.07"
    assert logstd[2] == "div 1/2; ELBO -112.00 (n=1)"
    (logvar,) = table_rows(stability, "param=logvar")
    assert logvar[2] == "div 0/2; ELBO -109.95 ± 0.07"
    # logstd at lr 0.1 is compared with logvar at lr 0.1, not at 0.001.
    comparison = section(md, "### Against the baseline")
    rows = {r[0]: r for r in table_rows(comparison, "optim.lr=0.1,param=logstd")
            + table_rows(comparison, "optim.lr=0.001,param=logstd")}
    assert rows["optim.lr=0.1,param=logstd"][1] == "optim.lr=0.1,param=logvar"
    assert rows["optim.lr=0.001,param=logstd"][1] == "optim.lr=0.001,param=logvar"
    # A label copied from a table names exactly one baseline, for every variant.
    run_report(capsys, sweep, "--no-figures", "--baseline", "optim.lr=0.001,param=logvar")
    comparison = section((sweep / "report.md").read_text(), "### Against the baseline")
    assert table_rows(comparison, "optim.lr=0.1,param=logstd")[0][1] == \
        "optim.lr=0.001,param=logvar"
    assert table_rows(comparison, "optim.lr=0.1,param=logvar")[0][1] == \
        "optim.lr=0.001,param=logvar"


def test_no_stability_table_without_an_lr_sweep(two_sweeps, capsys) -> None:
    a, _ = two_sweeps
    run_report(capsys, a, "--no-figures")
    assert "Learning-rate stability" not in (a / "report.md").read_text()


def test_equivalence_section(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "equiv"
    curve = [-130.123, -110.456, -100.789]
    make_run(sweep, ["+experiment@_global_=eq_logvar", "seed=0"], optim="sgd", lr=0.01,
             curve=curve)
    make_run(sweep, ["+experiment@_global_=eq_matched", "param=logstd", "seed=0"], optim="sgd",
             lr=0.01, head={"init": 0.5, "lr_mult": 0.25}, curve=curve)
    make_run(sweep, ["+experiment@_global_=eq_logstd", "param=logstd", "seed=0"], optim="sgd",
             lr=0.01, curve=[-130.123, -110.0, -101.289])
    make_run(sweep, ["+experiment@_global_=eq_logstd", "param=logstd", "seed=1"], optim="sgd",
             lr=0.01, curve=[-130.0, -110.0, -101.0])  # no logvar run with seed 1: no pair
    run_report(capsys, sweep, "--no-figures")
    md = (sweep / "report.md").read_text()
    equivalence = section(md, "### logvar / logstd equivalence")
    rows = {r[0]: r for r in table_rows(equivalence, "equiv/+experiment@_global_=eq_matched,"
                                        "param=logstd,seed=0")
            + table_rows(equivalence, "equiv/+experiment@_global_=eq_logstd,param=logstd,seed=0")}
    assert len(rows) == 2
    matched = rows["equiv/+experiment@_global_=eq_matched,param=logstd,seed=0"]
    assert matched[3] == "yes, exactly under SGD"
    assert matched[4] == "0" and matched[6] == "bitwise equal"
    plain = rows["equiv/+experiment@_global_=eq_logstd,param=logstd,seed=0"]
    assert plain[3].startswith("no (different function at initialisation)")
    assert plain[4] == "0.5"  # max |Δ test/elbo| over the three epochs
    assert plain[6] == "differ (first: test/elbo at step 20)"
    # Preset names label the variants; `experiment=NAME` finds one added as experiment@_global_.
    assert table_rows(md, "eq_matched,param=logstd")
    run_report(capsys, sweep, "--no-figures", "--baseline", "experiment=eq_logvar")
    comparison = section((sweep / "report.md").read_text(), "### Against the baseline")
    assert table_rows(comparison, "eq_matched,param=logstd")[0][1] == "eq_logvar"


def test_no_equivalence_section_without_sigma_head_knobs(two_sweeps, capsys) -> None:
    a, _ = two_sweeps  # logvar and logstd with the same seeds, but nothing made them equal
    run_report(capsys, a, "--no-figures")
    assert "### logvar / logstd equivalence" not in (a / "report.md").read_text()


@pytest.mark.parametrize(("config", "expected"), [
    ({"optim.name": "sgd", "model.sigma_head_init_scale": 0.5, "optim.sigma_head_lr_mult": 0.25},
     "yes, exactly under SGD"),
    ({"optim.name": "adam", "model.sigma_head_init_scale": 0.5, "optim.sigma_head_lr_mult": 0.5},
     "yes, up to Adam's ε"),
    ({"optim.name": "adam", "model.sigma_head_init_scale": 0.5,
      "optim.sigma_head_lr_mult": 0.25}, "no (the σ-head learning rate does not match)"),
    ({"optim.name": "sgd", "model.sigma_head_scale": 0.5}, "yes, exactly (same parameters"),
    ({"optim.name": "sgd", "model.sigma_head_init_scale": 0.5, "optim.sigma_head_lr_mult": 0.25,
      "optim.weight_decay": 1e-4}, "no (weight decay"),
    ({"optim.name": "adam"}, "no (different function at initialisation)"),
])
def test_expected_equivalence(config: dict, expected: str) -> None:
    assert report.expected_equivalence(config).startswith(expected)


def test_bad_input_is_a_clear_error(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(tmp_path / "missing")])
    assert exit_info.value.code == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "empty")])
    assert "no run folders" in capsys.readouterr().err
    make_run(tmp_path / "one", ["param=logvar", "seed=0"], curve=[-100.0])
    with pytest.raises(SystemExit):
        report.main([str(tmp_path / "one"), "--baseline", "param="])
    assert "--baseline" in capsys.readouterr().err


def test_a_run_is_counted_once(two_sweeps, capsys) -> None:
    a, _ = two_sweeps  # the sweep, then one of its runs again: still 11 runs, not 12
    out = run_report(capsys, a, a / "param=logvar,seed=0", "--no-figures")
    assert out.startswith("11 run(s):")
    assert len(read_csv(a / "report.csv")) == 11


def test_a_running_run_whose_process_is_gone_is_listed_as_killed(tmp_path: Path, capsys) -> None:
    """A SIGKILLed run cannot write its end: its summary.json stays `running` with the pid and
    host that wrote it. On that host the report checks the process and calls the run killed."""
    import os
    import socket
    import subprocess
    import sys

    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                           capture_output=True, text=True, check=True)
    dead_pid = int(ended.stdout)
    host = socket.gethostname()
    sweep = tmp_path / "sweep"
    make_run(sweep, ["param=logvar", "seed=0"], curve=[-120.0])
    make_run(sweep, ["param=logvar", "seed=1"], status="running", curve=[-121.0],
             extra={"pid": dead_pid, "host": host})
    make_run(sweep, ["param=logvar", "seed=2"], status="running", curve=[-121.0],
             extra={"pid": os.getpid(), "host": host})
    make_run(sweep, ["param=logvar", "seed=3"], status="running", curve=[-121.0],
             extra={"pid": dead_pid, "host": host + "-elsewhere"})
    run_report(capsys, sweep, "--no-figures")
    rows = {row["run"]: row["status"] for row in read_csv(sweep / "report.csv")}
    assert rows == {"param=logvar,seed=0": "completed", "param=logvar,seed=1": "killed",
                    "param=logvar,seed=2": "running", "param=logvar,seed=3": "running"}
    markdown = (sweep / "report.md").read_text()
    killed_line = next(line for line in markdown.splitlines() if "seed=1" in line and "killed"
                       in line)
    assert f"pid {dead_pid}" in killed_line and "vae-bench resume" in killed_line
    elsewhere = next(line for line in markdown.splitlines() if "seed=3 |" in line)
    assert "cannot check" in elsewhere


# ---------------------------------------------------------------------------------------------
# Statistics, report.json, duplicates, frontier

COMPARISON_FIELDS = {"variant", "baseline", "metric", "n", "difference", "ci_low", "ci_high",
                     "p_value", "p_holm", "beyond_noise", "method"}


def comparisons_by(document: dict, group_prefix: str) -> dict[tuple[str, str], dict]:
    (group,) = [g for g in document["groups"] if g["group"].startswith(group_prefix)]
    return {(c["variant"], c["metric"]): c for c in group["comparisons"]}


def test_intervals_and_p_values_are_scipys(two_sweeps, capsys) -> None:
    from scipy import stats

    a, b = two_sweeps
    run_report(capsys, a, b, "--no-figures")
    document = json.loads((a / "report.json").read_text())
    comparisons = comparisons_by(document, "dataset=mnist")
    for comparison in comparisons.values():
        assert set(comparison) == COMPARISON_FIELDS
    logvar = np.array([-100.0, -100.5, -99.5, -100.2])  # seeds 0..3
    sigmoid = logvar + np.array([1.0, -1.0, 0.5, -0.7])

    paired = comparisons[("param=sigmoid_bounded", "test/elbo")]
    expected = stats.ttest_rel(sigmoid, logvar)
    interval = expected.confidence_interval(0.95)
    assert paired["method"] == "paired t" and paired["n"] == {"variant": 4, "baseline": 4}
    assert paired["difference"] == pytest.approx(np.mean(sigmoid - logvar))
    assert paired["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)
    assert (paired["ci_low"], paired["ci_high"]) == pytest.approx(
        (interval.low, interval.high), rel=1e-9)

    welch = comparisons[("param=logstd", "test/elbo")]
    logstd = np.array([-105.0, -105.5])
    expected = stats.ttest_ind(logstd, logvar, equal_var=False)
    interval = expected.confidence_interval(0.95)
    assert welch["method"] == "Welch t" and welch["n"] == {"variant": 2, "baseline": 4}
    assert welch["p_value"] == pytest.approx(expected.pvalue, rel=1e-9)
    assert (welch["ci_low"], welch["ci_high"]) == pytest.approx(
        (interval.low, interval.high), rel=1e-9)

    one_seed = comparisons[("param=softplus_std", "test/elbo")]
    assert one_seed["ci_low"] is one_seed["p_value"] is one_seed["beyond_noise"] is None
    assert one_seed["method"].startswith("none: 1 seed")

    (group,) = [g for g in document["groups"] if g["group"].startswith("dataset=mnist")]
    (variant,) = [v for v in group["variants"] if v["variant"] == "param=logvar"]
    elbo = variant["metrics"]["test/elbo"]
    low, high = stats.t.interval(0.95, 3, loc=logvar.mean(), scale=stats.sem(logvar))
    assert (elbo["n"], elbo["ci_low"], elbo["ci_high"]) == (4, pytest.approx(low),
                                                            pytest.approx(high))


def test_equal_differences_get_no_interval_even_where_their_mean_rounds() -> None:
    """Three pairs 0.0125 apart: the float mean is not 0.0125 and the sample sd is 1e-18, not 0;
    that is still no spread to test against, not a CI of width 1e-17 and a p of 1e-30."""
    from vae_bench.report.stats import paired_t

    result = paired_t([0.0125, 0.0125, 0.0125], [0.0, 0.0, 0.0])
    assert result.ci is None and result.p_value is None and not result.tested
    assert result.difference == pytest.approx(0.0125)
    spread = paired_t([0.0125, 0.0126, 0.0125], [0.0, 0.0, 0.0])
    assert spread.ci is not None and spread.ci[0] < 0.0125 < spread.ci[1]
    from vae_bench.report.stats import welch_t

    constant = welch_t([0.0125, 0.0125, 0.0125], [0.0, 0.0])  # unpaired: the same holds
    assert constant.ci is None and constant.p_value is None and not constant.tested


def test_holm_by_hand() -> None:
    from vae_bench.report.stats import holm

    # Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> kept at 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_holm_across_one_table_decides_beyond_noise(tmp_path: Path, capsys) -> None:
    """A raw p < 0.05 that does not survive Holm's adjustment over the table is not 'beyond
    seed noise'."""
    sweep = tmp_path / "holm"
    base = [-100.0, -101.0, -99.0]
    shifts = {"logstd": [1.0, 1.3, 0.8], "natural": [-5.0, -5.5, -4.5],
              "softplus_std": [0.3, -0.4, 0.2]}
    for seed, value in enumerate(base):
        make_run(sweep, ["param=logvar", f"seed={seed}"], curve=[value])
        for param, shift in shifts.items():
            make_run(sweep, [f"param={param}", f"seed={seed}"], curve=[value + shift[seed]])
    run_report(capsys, sweep, "--no-figures")
    comparisons = comparisons_by(json.loads((sweep / "report.json").read_text()), "dataset=")
    tested = [c for c in comparisons.values() if c["p_value"] is not None]
    # ELBO and IWAE NLL (= −ELBO − 3) per variant; KL and active units are equal per seed.
    assert len(tested) == 6
    ranked = sorted(tested, key=lambda c: c["p_value"])
    running = 0.0
    for rank, comparison in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - rank) * comparison["p_value"]))
        assert comparison["p_holm"] == pytest.approx(running)
        assert comparison["beyond_noise"] == (running < 0.05)
    logstd = comparisons[("param=logstd", "test/elbo")]
    assert logstd["p_value"] < 0.05 <= logstd["p_holm"]  # significant alone, not in the family
    assert comparisons[("param=natural", "test/elbo")]["beyond_noise"] is True
    md = (sweep / "report.md").read_text()
    assert table_rows(md, "param=logstd")[1][9] == "no"  # [0] is the main table's row


def test_duplicates_count_once_and_are_listed(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    make_run(runs, ["param=logstd", "seed=0"], curve=[-100.0], folder="2025-01-01/10-00-00")
    make_run(runs, ["param=logstd", "seed=0"], curve=[-90.0], folder="2025-01-01/11-00-00")
    make_run(runs, ["param=logstd", "seed=1"], curve=[-101.0], folder="2025-01-01/12-00-00")
    make_run(runs, ["param=logstd", "seed=0"], curve=[-95.0], lr=0.01,  # another config
             folder="2025-01-01/13-00-00")
    out = run_report(capsys, runs, "--no-figures")
    assert "4 run(s): 4 completed; 1 duplicate(s) of an earlier run set aside" in out
    md = (runs / "report.md").read_text()
    duplicates = section(md, "## Duplicates set aside")
    assert table_rows(duplicates, "runs/2025-01-01/11-00-00") == [
        ["runs/2025-01-01/11-00-00", "completed", "runs/2025-01-01/10-00-00"]]
    document = json.loads((runs / "report.json").read_text())
    assert document["duplicates"] == [{"run": "runs/2025-01-01/11-00-00", "status": "completed",
                                       "duplicate_of": "runs/2025-01-01/10-00-00"}]
    (variant,) = document["groups"][0]["variants"]
    assert variant["metrics"]["test/elbo"]["n"] == 3  # seeds 0 and 1, and seed 0 at lr 0.01
    rows = {r["run"]: r["duplicate_of"] for r in read_csv(runs / "report.csv")}
    assert rows["2025-01-01/11-00-00"] == "runs/2025-01-01/10-00-00"
    assert rows["2025-01-01/13-00-00"] == ""


@pytest.fixture
def lr_sweep(tmp_path: Path) -> Path:
    """sgd × logstd: stable at 0.001 and 0.1 but a seed diverges at 0.01, all diverge at 1
    (not monotone). adam × logstd: stable up to 0.01, diverges from 0.1 (monotone)."""
    sweep = tmp_path / "lr"
    outcomes = {("sgd", "0.001"): [-110.0, -111.0], ("sgd", "0.01"): [-105.0, None],
                ("sgd", "0.1"): [-104.0, -103.0], ("sgd", "1.0"): [None, None],
                ("adam", "0.001"): [-102.0, -102.5], ("adam", "0.01"): [-101.0, -101.2],
                ("adam", "0.1"): [None, -150.0], ("adam", "1.0"): [None, None]}
    for (optim, lr), finals in outcomes.items():
        for seed, final in enumerate(finals):
            make_run(sweep, [f"optim={optim}", f"optim.lr={lr}", "param=logstd", f"seed={seed}"],
                     optim=optim, status="completed" if final is not None else "diverged",
                     curve=[-130.0, final] if final is not None else [-130.0],
                     extra={"diverged_step": 12} if final is None else None)
    return sweep


def test_frontier_rows_csv_and_json(lr_sweep: Path, capsys) -> None:
    from vae_bench.report.frontier import FRONTIER_COLUMNS

    out = run_report(capsys, lr_sweep)
    with open(lr_sweep / "frontier.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == FRONTIER_COLUMNS == (
            "variant", "max_stable_lr", "min_diverged_lr", "monotone", "best_lr",
            "best_test_elbo", "seeds")
        rows = {row["variant"]: row for row in reader}
    assert rows["optim=sgd"] == {"variant": "optim=sgd", "max_stable_lr": "0.1",
                                 "min_diverged_lr": "0.01", "monotone": "False",
                                 "best_lr": "0.1", "best_test_elbo": "-103.5", "seeds": "2"}
    assert rows["optim=adam"] == {"variant": "optim=adam", "max_stable_lr": "0.01",
                                  "min_diverged_lr": "0.1", "monotone": "True",
                                  "best_lr": "0.01", "best_test_elbo": "-101.1", "seeds": "2"}
    (group,) = json.loads((lr_sweep / "report.json").read_text())["groups"]
    frontier = {row["variant"]: row for row in group["frontier"]}
    assert set(frontier["optim=sgd"]) == set(FRONTIER_COLUMNS)
    assert frontier["optim=sgd"]["monotone"] is False and frontier["optim=sgd"]["seeds"] == 2
    assert frontier["optim=adam"]["best_test_elbo"] == pytest.approx(-101.1)

    md = (lr_sweep / "report.md").read_text()
    table = section(md, "### Stability frontier")
    assert table_rows(table, "optim=sgd")[0][1:] == ["0.1", "0.01", "**NO**", "0.1", "-103.50",
                                                     "2"]
    assert "**Not monotone: `optim=sgd`** completed every seed at lr=0.1, above lr=0.01" in table
    assert "! stability not monotone in lr: optim=sgd" in out
    png = lr_sweep / "frontier_mnist_mlp_bernoulli.png"
    assert png.read_bytes()[:8] == PNG_MAGIC and f"]({png.name})" in md


def test_no_frontier_without_an_lr_sweep(two_sweeps, capsys) -> None:
    a, _ = two_sweeps
    run_report(capsys, a, "--no-figures")
    assert "Stability frontier" not in (a / "report.md").read_text()
    assert not (a / "frontier.csv").exists()
    assert all(g["frontier"] == [] for g in json.loads((a / "report.json").read_text())["groups"])


def test_variant_override_is_an_ordinary_key(tmp_path: Path, capsys) -> None:
    """Presets in the `variant` config group name job folders `variant=NAME,seed=0`."""
    sweep = tmp_path / "variants"
    for seed, value in enumerate([-100.0, -100.4, -99.8]):
        make_run(sweep, ["variant=logstd_equivalence_sgd_logvar", f"seed={seed}"], optim="sgd",
                 curve=[value])
        make_run(sweep, ["variant=logstd_equivalence_sgd_logstd", f"seed={seed}"], optim="sgd",
                 curve=[value - 1.0 - 0.1 * seed])
    run_report(capsys, sweep, "--no-figures", "--baseline",
               "variant=logstd_equivalence_sgd_logvar")
    comparison = section((sweep / "report.md").read_text(), "### Against the baseline")
    row = table_rows(comparison, "variant=logstd_equivalence_sgd_logstd")[0]
    assert row[1:5] == ["variant=logstd_equivalence_sgd_logvar", "test/elbo", "paired t",
                        "3 pairs"]


def test_a_baseline_that_always_diverged_is_compared_on_divergence(tmp_path: Path,
                                                                     capsys) -> None:
    """No metric can be compared with a baseline without a completed run; divergence can, by
    Fisher's exact test, Holm-adjusted over the variants."""
    from scipy.stats import fisher_exact

    sweep = tmp_path / "decoder"
    for seed in range(3):
        make_run(sweep, ["variant=pixel_logvar", f"seed={seed}"], status="diverged",
                 curve=[-1300.0])
        make_run(sweep, ["variant=pixel_softplus_var", f"seed={seed}"], curve=[-1225.0 - seed])
        make_run(sweep, ["variant=pixel_logstd", f"seed={seed}"],
                 status="diverged" if seed else "completed", curve=[-1250.0])
    run_report(capsys, sweep, "--no-figures", "--baseline", "variant=pixel_logvar")
    comparison = section((sweep / "report.md").read_text(), "### Against the baseline")
    assert "`variant=pixel_logvar` has no completed run, so no metric is compared" in comparison
    assert "paired t" not in comparison and "Welch t" not in comparison
    rows = {row[0]: row[1:] for row in table_rows(comparison, "variant=pixel_softplus_var")
            + table_rows(comparison, "variant=pixel_logstd")}
    p_softplus = fisher_exact([[0, 3], [3, 0]]).pvalue
    p_logstd = fisher_exact([[2, 1], [3, 0]]).pvalue
    assert rows["variant=pixel_softplus_var"][:4] == ["variant=pixel_logvar", "0/3", "3/3",
                                                      f"{p_softplus:.3f}"]
    assert rows["variant=pixel_logstd"][1:4] == ["2/3", "3/3", f"{p_logstd:.3f}"]
    assert rows["variant=pixel_softplus_var"][4] == f"{min(1.0, 2 * p_softplus):.3f}"  # Holm
    assert rows["variant=pixel_softplus_var"][5] == "no"  # 3 seeds cannot show it


def test_no_divergence_table_where_nothing_diverged(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "calm"
    for seed in range(2):
        make_run(sweep, ["param=logvar", f"seed={seed}"], curve=[-100.0 - seed])
        make_run(sweep, ["param=logstd", f"seed={seed}"], curve=[-101.0 - seed])
    run_report(capsys, sweep, "--no-figures")
    report_md = (sweep / "report.md").read_text()
    assert "paired t" in report_md and "Fisher" not in report_md


# ---- difference to the baseline over training ---------------------------------------------------


def add_iwae_records(run: Path, values: dict[int, float]) -> None:
    """test/nll_iwae at some epochs only, as eval.iwae_every=[…] logs it."""
    with open(run / "metrics.jsonl", "a") as handle:
        for epoch, value in values.items():
            handle.write(json.dumps({"step": 10 * epoch, "epoch": epoch,
                                     "test/nll_iwae": value}) + "\n")


@pytest.fixture
def growing_gap(tmp_path: Path) -> Path:
    """logstd falls behind logvar by seed-dependent amounts that grow with the epoch; softplus_std
    has seed 0 only, and logvar's seed 3 has no partner. IWAE NLL is logged at epochs 1 and 4."""
    sweep = tmp_path / "gap"
    base = [-130.0, -115.0, -108.0, -104.0]
    for seed in range(4):
        run = make_run(sweep, ["param=logvar", f"seed={seed}"],
                       curve=[v + 0.3 * seed for v in base])
        add_iwae_records(run, {1: 125.0 - seed, 4: 100.0 - seed})
    for seed in range(3):
        gap = [-(0.5 + 0.1 * seed) * epoch for epoch in range(1, 5)]  # −0.5…−0.7 per epoch
        run = make_run(sweep, ["param=logstd", f"seed={seed}"],
                       curve=[v + 0.3 * seed + g for v, g in zip(base, gap)])
        add_iwae_records(run, {1: 125.0 - seed + 0.2, 4: 100.0 - seed + 1.0 + 0.1 * seed})
    make_run(sweep, ["param=softplus_std", "seed=0"], curve=[-129.0, -114.0])
    return sweep


def test_paired_difference_to_the_baseline_per_epoch(growing_gap: Path, capsys) -> None:
    from scipy import stats as scipy_stats

    from vae_bench.report.trends import group_trends

    options = report.parse_args([str(growing_gap)])
    result = report.build([growing_gap], growing_gap, options)
    (group,) = result["groups"]
    trends = group_trends(group)
    elbo = {t.variant.label: t for t in trends["test/elbo"]}
    assert set(elbo) == {"param=logstd", "param=softplus_std"}
    logstd = elbo["param=logstd"]
    assert logstd.epochs == [1, 2, 3, 4] and logstd.n == [3, 3, 3, 3]  # seed 3: no partner
    for index, epoch in enumerate(logstd.epochs):
        differences = [-(0.5 + 0.1 * seed) * epoch for seed in range(3)]
        assert logstd.mean[index] == pytest.approx(np.mean(differences))
        half = scipy_stats.t.ppf(0.975, 2) * np.std(differences, ddof=1) / np.sqrt(3)
        assert logstd.ci[index] == pytest.approx((np.mean(differences) - half,
                                                  np.mean(differences) + half))
    # One seed pair: the mean difference, and no band.
    softplus = elbo["param=softplus_std"]
    assert softplus.epochs == [1, 2] and softplus.n == [1, 1] and softplus.ci == [None, None]
    assert softplus.mean == pytest.approx([1.0, 1.0])
    # IWAE NLL where logged: epoch 1 (every pair +0.2, no spread: no band) and epoch 4.
    (nll,) = trends["test/nll_iwae"]
    assert nll.epochs == [1, 4]
    assert nll.mean == pytest.approx([0.2, 1.1]) and nll.ci[0] is None
    assert nll.ci[1][0] < 1.1 < nll.ci[1][1]

    md = (growing_gap / "report.md").read_text()
    png = growing_gap / "baseline_trend_mnist_mlp_bernoulli.png"
    assert png.read_bytes()[:8] == PNG_MAGIC
    assert f"![Paired difference to the baseline per epoch]({png.name})" in md


def test_the_differences_over_training_are_tabled_and_in_report_json(growing_gap: Path,
                                                                     capsys) -> None:
    """The trend figure's numbers: a table at the IWAE epochs (1 and 4 here), with the active
    units and σ's share at a bound, and every epoch in report.json."""
    for seed in range(3):  # active units per epoch: logstd keeps one latent fewer from epoch 3
        for param, fewer in (("logvar", 0), ("logstd", 1)):
            with open(growing_gap / f"param={param},seed={seed}" / "metrics.jsonl", "a") as f:
                for epoch in range(1, 5):
                    f.write(json.dumps({"step": 10 * epoch, "epoch": epoch,
                                        "latent/active_units":
                                            20.0 - (fewer if epoch >= 3 else 0),
                                        "posterior/test_saturated_frac":
                                            0.0125 * fewer * (epoch == 4)}) + "\n")
    run_report(capsys, growing_gap, "--no-figures")
    table = section((growing_gap / "report.md").read_text(),
                    "### Difference to the baseline over training")
    rows = {row[2]: row for row in table_rows(table, "param=logstd")}
    assert table_rows(table, "variant")[0][4:] == ["epoch 1", "epoch 4"]
    assert rows["test/elbo"][1:4] == ["param=logvar", "test/elbo", "3 seed pairs"]
    assert rows["test/elbo"][4].startswith("-0.60 [") and rows["test/elbo"][5].startswith("-2.40 [")
    assert rows["test/nll_iwae"][4] == "+0.20"  # every pair +0.2: no spread, no CI
    assert rows["latent/active_units"][4:] == ["+0.0", "-1.0"]
    assert rows["posterior/test_saturated_frac"][4:] == ["+0.0000", "+0.0125"]
    softplus = {row[2]: row for row in table_rows(table, "param=softplus_std")}
    assert softplus["test/elbo"][3:] == ["1 seed pair", "+1.00", "—"]  # epoch 4 not logged
    (group,) = json.loads((growing_gap / "report.json").read_text())["groups"]
    trend = next(t for t in group["trends"]
                 if t["variant"] == "param=logstd" and t["tag"] == "test/elbo")
    assert trend["epochs"] == [1, 2, 3, 4] and trend["n"] == [3, 3, 3, 3]
    assert trend["difference"] == pytest.approx([-0.6, -1.2, -1.8, -2.4])
    assert all(low < d < high for low, d, high in
               zip(trend["ci_low"], trend["difference"], trend["ci_high"]))


def test_without_iwae_checkpoints_the_table_takes_log_spaced_epochs() -> None:
    from vae_bench.report.trends import Trend, table_epochs

    def logged(epochs: list[int]) -> Trend:
        return Trend(None, None, "test/elbo", epochs, [0.0] * len(epochs),
                     [None] * len(epochs), [1] * len(epochs))

    assert table_epochs({"test/elbo": [logged(list(range(1, 11)))]}) == [1, 2, 3, 6, 10]
    assert table_epochs({"test/elbo": [logged([1, 2, 3])]}) == [1, 2, 3]
    assert table_epochs({"test/elbo": [logged(list(range(1, 301)))],
                         "test/nll_iwae": [logged([300])]}) == [1, 4, 17, 72, 300]


def test_no_trend_figure_without_a_baseline(growing_gap: Path, capsys) -> None:
    run_report(capsys, growing_gap, "--baseline", "param=natural")
    assert not list(growing_gap.glob("baseline_trend_*.png"))
    assert list(growing_gap.glob("elbo_*.png"))


def test_runs_differing_only_in_the_final_iwae_k_pair_as_one_variant(tmp_path: Path,
                                                                     capsys) -> None:
    """experiment=long_horizon: seed 0 ends with k=5000, seeds 1 and 2 with k=1000."""
    sweep = tmp_path / "horizon"
    for param, gap in (("logvar", 0.0), ("logstd", -1.0)):
        for seed in range(3):
            k_final = 5000 if seed == 0 else 1000
            make_run(sweep, [f"param={param}", f"seed={seed}", f"eval.iwae_k_final={k_final}"],
                     curve=[-110.0 + gap * seed, -100.0 + gap * seed ** 2])
    run_report(capsys, sweep, "--no-figures")
    rows = read_csv(sweep / "report.csv")
    assert sorted({row["variant"] for row in rows}) == ["param=logstd", "param=logvar"]
    comparison = section((sweep / "report.md").read_text(), "### Against the baseline")
    assert table_rows(comparison, "param=logstd")[0][3:5] == ["paired t", "3 pairs"]


def test_the_final_iwae_estimate_is_shown_and_compared_where_runs_logged_it(tmp_path: Path,
                                                                          capsys) -> None:
    """test/nll_iwae_final (eval.iwae_k_final) joins the tables, the comparisons and their Holm
    family of a group whose runs logged it, with the k of each seed in its column's name."""
    sweep = tmp_path / "horizon"
    finals = {"logvar": [90.0, 91.0, 89.5], "logstd": [90.5, 91.6, 90.2]}
    for param, values in finals.items():
        for seed, final in enumerate(values):
            k_final = 5000 if seed == 0 else 1000
            make_run(sweep, [f"param={param}", f"seed={seed}", f"eval.iwae_k_final={k_final}"],
                     curve=[-110.0, -100.0 - seed],
                     extra={"test/nll_iwae_final": final, "eval/iwae_k_final": k_final})
    run_report(capsys, sweep, "--no-figures")
    md = (sweep / "report.md").read_text()
    assert "test/nll_iwae_final (k=5000: seed 0; k=1000: seeds 1, 2)" in md
    (main_row,) = [row for row in table_rows(md, "param=logstd") if "completed" in row[1]]
    assert main_row[7].startswith("90.77 ± ")  # mean of logstd's three finals
    comparison = section(md, "### Against the baseline")
    assert "1 variant(s) × 5 metrics" in comparison
    final = comparisons_by(json.loads((sweep / "report.json").read_text()),
                           "dataset=")[("param=logstd", "test/nll_iwae_final")]
    assert final["method"] == "paired t" and final["n"] == {"variant": 3, "baseline": 3}
    assert final["difference"] == pytest.approx(np.mean([0.5, 0.6, 0.7]))
    (group,) = json.loads((sweep / "report.json").read_text())["groups"]
    assert group["variants"][0]["metrics"]["test/nll_iwae_final"]["n"] == 3


def test_a_report_without_final_estimates_keeps_its_four_metrics(two_sweeps, capsys) -> None:
    a, b = two_sweeps
    run_report(capsys, a, b, "--no-figures")
    md = (a / "report.md").read_text()
    assert "nll_iwae_final" not in md and "× 4 metrics" in md
    for group in json.loads((a / "report.json").read_text())["groups"]:
        for variant in group["variants"]:
            assert set(variant["metrics"]) == {"test/elbo", "test/nll_iwae", "test/kl",
                                               "latent/active_units"}

def set_config(run: Path, **values) -> None:
    """Add dotted keys to a run's config.yaml, e.g. `set_config(run, **{"data.root": "/d"})`."""
    config = yaml.safe_load((run / "config.yaml").read_text())
    for dotted, value in values.items():
        node = config
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    (run / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.mark.parametrize(("root", "label"), [("/data/CIFAR10-JPEG", "CIFAR-10 (JPEG re-encoding)"),
                                             ("/data", "CIFAR-10")])
def test_report_opens_with_the_budget_every_run_shares(tmp_path: Path, capsys, root: str,
                                                       label: str) -> None:
    sweep = tmp_path / "sweep"
    for lr in (0.001, 0.01):
        for seed in (0, 1):
            run = make_run(sweep, [f"optim.lr={lr}", "param=logvar", f"seed={seed}"],
                           dataset="cifar10", model="conv", likelihood="gaussian_shared",
                           curve=[-900, (-840 if lr == 0.01 else -850) - seed])
            set_config(run, **{"data.root": root, "model.latent_dim": 32,
                               "trainer.batch_size": 64, "eval.iwae_k": 100})
    run_report(capsys, sweep, "--no-figures")
    md = (sweep / "report.md").read_text()
    assert md.startswith("# vae-bench report\n\n## Budget\n")
    budget = md[:md.index("Sweeps:")]
    assert f"- **data set**: {label}\n" in budget  # never plain CIFAR-10 for the JPEG copy
    assert "- **model**: conv, 32 latents\n" in budget
    assert "- **likelihood**: gaussian_shared\n" in budget
    assert "- **training**: 3 epochs, batch size 64\n" in budget
    assert "- **IWAE**: k=100 importance samples, on the whole test split" in budget
    assert ("- **optimizer**: *varies between runs* (2 settings: adam, lr 0.001; adam, lr 0.01)"
            in budget)
    assert table_rows(md, "variant")[0][4] == "test/nll_iwae (k=100)"
    # Two baseline variants (logvar at each lr): the target is the better one's final mean.
    assert "Target ELBO: -840.50 (default: the final mean test ELBO of the baseline " \
        "`optim.lr=0.01`, the best of 2 baseline variants" in md


def test_no_baseline_means_no_default_target(tmp_path: Path, capsys) -> None:
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        make_run(sweep, ["param=logstd", f"seed={seed}"], curve=[-120, -100])
    run_report(capsys, sweep, "--no-figures")
    md = (sweep / "report.md").read_text()
    assert "no baseline variant completed a run here, so there is no default target" in md
    assert table_rows(md, "variant")[0][-1] == "epochs to target"
    assert table_rows(md, "param=logstd")[0][-1] == "—"


def test_the_budget_names_the_data_as_the_runs_recorded_it(tmp_path: Path, capsys) -> None:
    # data/label comes from the files' checksums: it beats a guess from the folder's name.
    sweep = tmp_path / "sweep"
    for seed in (0, 1):
        run = make_run(sweep, ["param=logvar", f"seed={seed}"], dataset="cifar10", model="conv",
                       curve=[-900, -850])
        set_config(run, **{"data.root": "/data/cifar"})
        summary = json.loads((run / "summary.json").read_text())
        summary["data/label"] = "CIFAR-10 (JPEG re-encoding)"
        (run / "summary.json").write_text(json.dumps(summary))
    run_report(capsys, sweep, "--no-figures")
    md = (sweep / "report.md").read_text()
    assert "- **data set**: CIFAR-10 (JPEG re-encoding)\n" in md



def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[16:24]  # IHDR: width, height
    return int.from_bytes(header[:4], "big"), int.from_bytes(header[4:], "big")


def test_trend_figure_rows_per_variant_or_one_shared_panel(tmp_path: Path, capsys) -> None:
    """Up to 9 compared variants get a row each; an lr grid's many share one row of panels."""
    few, many = tmp_path / "few", tmp_path / "many"
    for seed in range(2):
        for lr in (0.001, 0.01, 0.1, 1.0, 3.0, 10.0):
            for param in ("logvar", "logstd", "softplus_std"):
                offset = {"logvar": 0.0, "logstd": -1.0, "softplus_std": 1.0}[param] * lr
                make_run(many, [f"optim.lr={lr}", f"param={param}", f"seed={seed}"],
                         curve=[-120.0 + offset + seed, -110.0 + offset - seed])
        for param in ("logvar", "logstd", "softplus_std"):
            make_run(few, [f"param={param}", f"seed={seed}"], curve=[-120.0 - seed, -110.0])
    run_report(capsys, few)
    run_report(capsys, many)
    few_png = few / "baseline_trend_mnist_mlp_bernoulli.png"
    many_png = many / "baseline_trend_mnist_mlp_bernoulli.png"
    assert png_size(few_png)[1] > 550  # two rows of panels: logstd, softplus_std
    assert png_size(many_png)[1] < 550  # 12 compared variants in one row, a legend below
