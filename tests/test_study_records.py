"""scripts/study_records.py: a study's finished runs kept in git, so that a sweep cut short by
the end of a session goes on from a fresh checkout (empty outputs/) with the same command."""

from __future__ import annotations

import importlib.util
import json
import lzma
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import TINY, run_cli

from vae_bench.report.figures import logvar_histogram
from vae_bench.report.runs import load_run

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "study_records.py"
spec = importlib.util.spec_from_file_location("study_records", SCRIPT)
study_records = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study_records)


def records_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120)


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


@pytest.mark.slow
def test_records_of_finished_runs_let_the_same_sweep_skip_them_on_a_fresh_machine(
        tmp_path: Path) -> None:
    sweep = tmp_path / "outputs" / "study"
    command = ["train", "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}"]
    first = run_cli(command, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    done, cut = sweep / "seed=0", sweep / "seed=1"
    # seed=1 as if the session had ended while it trained: not finished, so never recorded.
    (cut / "summary.json").write_text(json.dumps({"status": "interrupted"}))

    records = tmp_path / "docs" / "study" / "runs"
    saved = records_cli("save", str(sweep), str(records))
    assert saved.returncode == 0, saved.stderr
    assert "1 saved" in saved.stdout and "1 unfinished" in saved.stdout
    assert sorted(p.name for p in records.iterdir()) == ["multirun.yaml", "seed=0"]
    record = records / "seed=0"
    for name in ("config.yaml", "summary.json", "train.log"):
        assert (record / name).read_bytes() == (done / name).read_bytes(), name
    assert not (record / "metrics.jsonl").exists()  # kept compressed, and read as it was
    assert lzma.decompress((record / "metrics.jsonl.xz").read_bytes()) == (
        done / "metrics.jsonl").read_bytes()
    assert load_run(record, records).records() == load_run(done, sweep).records()
    assert (done / "checkpoints").is_dir() and not (record / "checkpoints").exists()
    # The events are cut to the one histogram the report draws, and it is the run's own.
    original = logvar_histogram(load_run(done, sweep))
    kept = logvar_histogram(load_run(record, records))
    assert original is not None and kept is not None
    assert kept[0] == original[0]
    for ours, theirs in zip(kept[1:], original[1:]):
        np.testing.assert_array_equal(ours, theirs)
    events_size = sum(p.stat().st_size for p in done.glob("events.out.tfevents.*"))
    assert sum(p.stat().st_size for p in record.glob("events.out.tfevents.*")) < events_size

    before = tree(records)
    again = records_cli("save", str(sweep), str(records))
    assert "1 unchanged" in again.stdout and tree(records) == before  # nothing for git to see

    # A fresh machine: outputs/ is gone; restoring the records and running the same command
    # skips the recorded run and trains the one that was not finished.
    fresh = tmp_path / "fresh" / "study"
    restored = records_cli("restore", str(records), str(fresh))
    assert restored.returncode == 0 and "1 restored" in restored.stdout
    rerun = run_cli(["train", "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={fresh}"], tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    log = rerun.stdout + rerun.stderr
    assert "already completed, skipped" in log
    assert (fresh / "seed=0" / "metrics.jsonl").read_text() == (done / "metrics.jsonl").read_text()
    assert json.loads((fresh / "seed=1" / "summary.json").read_text())["status"] == "completed"
    # The records folder is itself a folder of runs for the report.
    report = run_cli(["report", str(records), "--out", str(tmp_path / "report")], tmp_path)
    assert report.returncode == 0, report.stderr[-3000:]
    assert "1 completed" in (tmp_path / "report" / "report.md").read_text()


def test_restore_never_touches_a_job_folder_that_is_there(tmp_path: Path) -> None:
    records, sweep = tmp_path / "records", tmp_path / "sweep"
    for folder, status in ((records / "seed=0", "completed"), (records / "seed=1", "completed"),
                           (sweep / "seed=1", "running")):
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("seed: 0\n")
        (folder / "summary.json").write_text(json.dumps({"status": status}))
    counts = study_records.restore(records, sweep)
    assert counts == {"restored": 1, "already there": 1}
    assert json.loads((sweep / "seed=1" / "summary.json").read_text())["status"] == "running"
    assert json.loads((sweep / "seed=0" / "summary.json").read_text())["status"] == "completed"


def test_save_records_diverged_runs_and_clears_what_a_cut_short_save_left(tmp_path: Path) -> None:
    sweep, records = tmp_path / "sweep", tmp_path / "records"
    for name, status in (("seed=0", "diverged"), ("seed=1", "running"), ("seed=2", "failed")):
        (sweep / name).mkdir(parents=True)
        (sweep / name / "config.yaml").write_text("seed: 0\n")
        (sweep / name / "summary.json").write_text(json.dumps({"status": status}))
    leftover = records / ".seed=0.abc123"
    leftover.mkdir(parents=True)
    (leftover / "config.yaml").write_text("half a record\n")
    counts = study_records.save(sweep, records)
    assert counts == {"saved": 1, "unchanged": 0, "unfinished": 2}
    assert sorted(p.name for p in records.iterdir()) == ["seed=0"]


def test_restore_with_no_records_yet_is_a_fresh_start_and_save_of_no_folder_is_an_error(
        tmp_path: Path) -> None:
    nothing = records_cli("restore", str(tmp_path / "none"), str(tmp_path / "sweep"))
    assert nothing.returncode == 0 and "nothing to restore" in nothing.stdout
    bad = records_cli("save", str(tmp_path / "none"), str(tmp_path / "records"))
    assert bad.returncode == 2
    assert bad.stderr.strip() == f"study_records: error: {tmp_path / 'none'} is not a folder"


FAKE_VAE_BENCH = """\
import json, os, pathlib, sys, time
sweep = pathlib.Path(next(a for a in sys.argv if a.startswith("hydra.sweep.dir=")).split("=", 1)[1])
job = sweep / "param=logvar,seed=0"
if job.exists():
    print("fake: already there, skipped")
else:
    job.mkdir(parents=True)
    (job / "config.yaml").write_text("seed: 0\\n")
    (job / "summary.json").write_text(json.dumps({"status": "completed"}))
    print("fake: trained")
    record = pathlib.Path(os.environ["FAKE_RECORD"])
    for _ in range(100):  # the sweep goes on; the finished job is recorded meanwhile
        if (record / "summary.json").is_file():
            print("fake: recorded while the sweep ran")
            break
        time.sleep(0.1)
"""


def test_reproduce_findings_restores_before_and_records_after_each_sweep(tmp_path: Path) -> None:
    """The script's wiring, with a stand-in for vae-bench that 'trains' one job."""
    fake = tmp_path / "fake_vae_bench.py"
    fake.write_text(FAKE_VAE_BENCH)
    docs = tmp_path / "docs"
    env = {**os.environ, "VAE_BENCH_DATA": str(tmp_path), "STUDIES": "same_init_sigma",
           "SWEEPS_ONLY": "1", "FINDINGS_DOCS": str(docs), "VAE_BENCH": f"{sys.executable} {fake}",
           "RECORD_EVERY": "1",
           "FAKE_RECORD": str(docs / "same_init_sigma" / "runs" / "param=logvar,seed=0")}

    def reproduce(runs: Path) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(ROOT / "scripts" / "reproduce_findings.sh")],
                              env={**env, "FINDINGS_RUNS": str(runs)}, capture_output=True,
                              text=True, timeout=120)

    first = reproduce(tmp_path / "first")
    assert first.returncode == 0, first.stderr
    assert "fake: trained" in first.stdout
    assert "fake: recorded while the sweep ran" in first.stdout
    record = docs / "same_init_sigma" / "runs" / "param=logvar,seed=0"
    assert json.loads((record / "summary.json").read_text())["status"] == "completed"
    second = reproduce(tmp_path / "second")  # a fresh machine: another, empty runs folder
    assert second.returncode == 0, second.stderr
    assert "fake: already there, skipped" in second.stdout


def test_reports_only_trains_nothing_and_reports_from_the_records(tmp_path: Path) -> None:
    """REPORTS_ONLY=1 redraws the reports from the committed records on a fresh machine: the
    records are restored, no sweep starts, and no CIFAR-10 copy is needed; a study with neither
    records nor runs is said to need a run, and the others go on."""
    record = tmp_path / "docs" / "same_init_sigma" / "runs" / "param=logvar,seed=0"
    record.mkdir(parents=True)
    (record / "config.yaml").write_text("seed: 0\n")
    (record / "summary.json").write_text(json.dumps({"status": "completed"}))
    fake = tmp_path / "fake_vae_bench.py"
    fake.write_text("import sys; print('fake: vae-bench', *sys.argv[1:])\n")
    runs, docs = tmp_path / "runs", tmp_path / "docs"
    env = {**os.environ, "VAE_BENCH_DATA": str(tmp_path), "REPORTS_ONLY": "1",
           "STUDIES": "same_init_sigma cifar_encoder", "CIFAR10_ROOT": str(tmp_path / "none"),
           "FINDINGS_RUNS": str(runs), "FINDINGS_DOCS": str(docs),
           "VAE_BENCH": f"{sys.executable} {fake}"}
    script = ["bash", str(ROOT / "scripts" / "reproduce_findings.sh")]
    result = subprocess.run(script, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fake: vae-bench train" not in result.stdout
    study = "same_init_sigma"
    assert f"fake: vae-bench report {runs / study} --out {docs / study}" in result.stdout
    # cifar_encoder: no records and no runs here, so nothing to report; said, and the end reached
    assert "fake: vae-bench report" not in result.stdout.split("cifar_encoder", 1)[1]
    assert f"== cifar_encoder: no runs in {runs / 'cifar_encoder'}" in result.stdout
    assert "== done" in result.stdout
    restored = runs / "same_init_sigma" / "param=logvar,seed=0" / "summary.json"
    assert json.loads(restored.read_text())["status"] == "completed"
    both = subprocess.run(script, env={**env, "SWEEPS_ONLY": "1"}, capture_output=True,
                          text=True, timeout=120)
    assert both.returncode == 2 and "fake:" not in both.stdout
    assert len(both.stderr.strip().splitlines()) == 1 and "REPORTS_ONLY=1" in both.stderr


def test_reproduce_findings_refuses_an_incomplete_cifar10_folder_before_any_sweep(
        tmp_path: Path) -> None:
    """CIFAR10_ROOT is checked once, before the sweep: the original is fetched where no
    CIFAR-10 is there; a partial copy is never written over, and stops the script with one
    line naming the folder (no network is needed to see that)."""
    partial = tmp_path / "cifar" / "cifar-10-batches-py"
    partial.mkdir(parents=True)
    (partial / "data_batch_1").write_bytes(b"not all of CIFAR-10")
    fake = tmp_path / "fake_vae_bench.py"
    fake.write_text("import sys; print('fake: vae-bench', *sys.argv[1:])\n")
    env = {**os.environ, "VAE_BENCH_DATA": str(tmp_path), "STUDIES": "cifar_encoder",
           "CIFAR10_ROOT": str(tmp_path / "cifar"), "FINDINGS_RUNS": str(tmp_path / "runs"),
           "FINDINGS_DOCS": str(tmp_path / "docs"), "VAE_BENCH": f"{sys.executable} {fake}"}
    result = subprocess.run(["bash", str(ROOT / "scripts" / "reproduce_findings.sh")], env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "fake: vae-bench" not in result.stdout  # nothing swept
    message = result.stderr.strip().splitlines()
    assert len(message) == 1, result.stderr
    assert f"CIFAR10_ROOT={tmp_path / 'cifar'}" in message[0]
    assert "incomplete" in message[0] and "STUDIES=" in message[0]
    assert sorted(p.name for p in partial.iterdir()) == ["data_batch_1"]  # never written over
