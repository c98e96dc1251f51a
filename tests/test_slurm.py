"""Sweeps on a real SLURM: scripts/slurm_local.sh starts a one-node cluster on this machine
(Debian's slurm-wlm and munge, installed with apt where missing; no accounting database, memory
enforced by jobacct_gather's OverMemoryKill), and tiny sweeps go through `hydra/launcher=slurm`.

These tests install packages and start daemons, so they run only when asked:
VAE_BENCH_SLURM=1 (set by .ci/run where it runs as root and apt works); they skip elsewhere.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import TINY, run_cli, start_cli

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "slurm_local.sh"
TIMEOUT = 600  # one sweep on a loaded 2-core machine takes 1-3 minutes
# How long after its job ended a sweep may take to end by itself: the launcher's result grace
# (15 s) and squeue polls (at most 15 s apart), with room for a loaded machine.
ENDS_WITHIN = 120

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(os.environ.get("VAE_BENCH_SLURM") != "1",
                       reason="set VAE_BENCH_SLURM=1 (root, apt) to start a local SLURM; "
                              ".ci/run does where it can"),
]


@pytest.fixture(scope="session")
def cluster():
    if os.geteuid() != 0:
        pytest.skip("the local SLURM needs root")
    started = subprocess.run([str(SCRIPT), "start", "overmemkill"], capture_output=True,
                             text=True, timeout=1200)
    assert started.returncode == 0, started.stdout + started.stderr
    yield
    stopped = subprocess.run([str(SCRIPT), "stop"], capture_output=True, text=True, timeout=300)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr


def sweep_command(sweep: Path, *overrides: str) -> list[str]:
    # One CPU per task: two tasks at once on this 2-core machine.
    return ["train", "-m", *TINY, "trainer.epochs=1", "eval.iwae_k=1", "hydra/launcher=slurm",
            "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=3",
            "hydra.launcher.timeout_min=10", f"hydra.sweep.dir={sweep}", *overrides]


# A job long enough to be caught mid-training: 512 steps of batch 4.
LONG_JOB = ["dataset.num_train=2048", "trainer.batch_size=4"]


def summary_of(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def training_pid(run_dir: Path, proc: subprocess.Popen) -> int:
    """The pid of the run's training process, once it is inside its training loop."""
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        summary = summary_of(run_dir)
        metrics = run_dir / "metrics.jsonl"
        if summary.get("status") == "running" and metrics.is_file() and metrics.stat().st_size:
            return summary["pid"]
        time.sleep(0.1)
    out, err = proc.communicate(timeout=60) if proc.poll() is not None else ("", "")
    pytest.fail(f"{run_dir.name} never reached its training loop\n{out[-2000:]}{err[-2000:]}")


def slurm_job_of(pid: int) -> str:
    environ = dict(item.split("=", 1) for item in
                   Path(f"/proc/{pid}/environ").read_text().split("\0") if "=" in item)
    return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def submitit_worker_of(pid: int) -> int:
    """The submitit worker above a training process: its parent, or its zygote's parent where
    the worker forked the training from a zygote (vae_bench/zygote.py)."""
    for _ in range(4):
        pid = parent_of(pid)
        if "submitit" in Path(f"/proc/{pid}/cmdline").read_text():
            return pid
    raise AssertionError(f"no submitit worker above the training process {pid}")


def ends_by_itself(proc: subprocess.Popen, since: float) -> tuple[str, str]:
    """The sweep's output, once it has ended on its own within ENDS_WITHIN of `since`."""
    try:
        out, err = proc.communicate(timeout=max(1.0, since + ENDS_WITHIN - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"the sweep did not end within {ENDS_WITHIN} s\n{out[-3000:]}{err[-3000:]}")
    assert proc.returncode == 0, out[-3000:] + err[-3000:]
    assert "Traceback" not in out + err, out[-3000:] + err[-3000:]
    return out, err


def closing_counts(output: str) -> str:
    (line,) = [line for line in output.splitlines() if "sweep finished" in line]
    return line.split("sweep finished, ", 1)[1]


def reported(sweep: Path, tmp_path: Path) -> dict[str, str]:
    result = run_cli(["report", str(sweep), "--no-figures"], tmp_path, timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(sweep / "report.csv", newline="") as handle:
        return {row["run"]: row["status"] for row in csv.DictReader(handle)}


def test_four_tasks_one_scancelled_then_a_rerun_finishes_only_it(cluster, tmp_path: Path) -> None:
    """A 4-task sweep on SLURM; scancel of one task while it trains leaves it `interrupted`
    (SIGTERM reaches the training, which checkpoints); the report reads the sweep; the same
    command again skips the 3 completed tasks and resumes the interrupted one, and the terminal
    shows each job's own skipped or resumed line."""
    sweep = tmp_path / "sweep"
    command = sweep_command(sweep, *LONG_JOB, "seed=0,1,2,3")
    proc = start_cli(command, tmp_path)
    target = sweep / "seed=1"
    job = slurm_job_of(training_pid(target, proc))
    subprocess.run(["scancel", job], check=True, timeout=60)
    cancelled = time.monotonic()
    out, _ = ends_by_itself(proc, cancelled)
    assert closing_counts(out) == ("4 jobs: 3 completed, 0 diverged, 0 failed, 1 interrupted, "
                                   "0 killed")
    assert summary_of(target)["status"] == "interrupted"
    assert "interrupted by SIGTERM" in out  # the job's own line, copied from its submitit log
    assert reported(sweep, tmp_path) == {"seed=0": "completed", "seed=1": "interrupted",
                                         "seed=2": "completed", "seed=3": "completed"}

    finished = {seed: (sweep / f"seed={seed}" / "metrics.jsonl").read_text() for seed in (0, 2, 3)}
    again = run_cli(command, tmp_path, timeout=TIMEOUT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert closing_counts(again.stdout) == ("4 jobs: 4 completed, 0 diverged, 0 failed, "
                                            "0 interrupted, 0 killed (3 of them done before, "
                                            "skipped)")
    assert all((sweep / f"seed={seed}" / "metrics.jsonl").read_text() == text
               for seed, text in finished.items()), "a completed job was trained again"
    assert again.stdout.count("already completed, skipped") == 3
    assert "seed=1: its earlier attempt ended interrupted; continuing from its last " \
           "checkpoint" in again.stdout
    assert reported(sweep, tmp_path) == {f"seed={seed}": "completed" for seed in range(4)}


def test_a_sigkilled_worker_ends_the_sweep_and_a_rerun_finishes_it(cluster,
                                                                    tmp_path: Path) -> None:
    """SIGKILL of one task's submitit worker (what a lost node or an admin's kill -9 does):
    without accounting, submitit alone would poll forever. The sweep ends by itself, counts the
    job, shows no traceback; the report lists it and the same command again finishes it."""
    sweep = tmp_path / "sweep"
    command = sweep_command(sweep, *LONG_JOB, "seed=0,1")
    proc = start_cli(command, tmp_path)
    target = sweep / "seed=1"
    worker = submitit_worker_of(training_pid(target, proc))
    os.kill(worker, signal.SIGKILL)
    out, _ = ends_by_itself(proc, time.monotonic())
    # The training gets SIGTERM when its worker dies and may write `interrupted` before the
    # step is torn down; if not, the launcher records `killed`. Either resumes.
    status = summary_of(target)["status"]
    assert status in ("interrupted", "killed")
    counts = {"interrupted": "1 interrupted, 0 killed", "killed": "0 interrupted, 1 killed"}
    assert closing_counts(out) == f"2 jobs: 1 completed, 0 diverged, 0 failed, {counts[status]}"
    assert f"{target}: its SLURM job" in out and "without returning" in out
    assert reported(sweep, tmp_path) == {"seed=0": "completed", "seed=1": status}

    again = run_cli(command, tmp_path, timeout=TIMEOUT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert closing_counts(again.stdout) == ("2 jobs: 2 completed, 0 diverged, 0 failed, "
                                            "0 interrupted, 0 killed (1 of them done before, "
                                            "skipped)")
    assert summary_of(target)["status"] == "completed"


def test_a_task_over_its_memory_ends_the_sweep_and_a_rerun_finishes_it(cluster,
                                                                        tmp_path: Path) -> None:
    """OverMemoryKill SIGKILLs every process of a task over its --mem: the worker cannot
    return, the training cannot write its end. The sweep ends by itself and the run is recorded
    `killed`; the same command with more memory finishes it, and only it."""
    sweep = tmp_path / "sweep"
    # A 784-100000-20 MLP: 157 M weights, 2.5 GB with gradients and Adam's moments (> 3 GB with
    # the worker and the training's libraries).
    command = sweep_command(sweep, "trainer.max_steps_per_epoch=2", "model.hidden=[64],[100000]")
    started = time.monotonic()
    proc = start_cli(command, tmp_path)
    out, _ = ends_by_itself(proc, started + TIMEOUT - ENDS_WITHIN)
    target = sweep / "model.hidden=[100000]"
    summary = summary_of(target)
    assert summary["status"] == "killed", out[-3000:]
    assert summary["slurm_state"] in ("OUT_OF_MEMORY", "FAILED", "CANCELLED")
    assert closing_counts(out) == "2 jobs: 1 completed, 0 diverged, 0 failed, 0 interrupted, " \
                                  "1 killed"
    assert f"{target}: its SLURM job" in out
    assert reported(sweep, tmp_path) == {"model.hidden=[64]": "completed",
                                         "model.hidden=[100000]": "killed"}

    again = run_cli([*command, "hydra.launcher.mem_gb=8"], tmp_path, timeout=TIMEOUT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert closing_counts(again.stdout) == ("2 jobs: 2 completed, 0 diverged, 0 failed, "
                                            "0 interrupted, 0 killed (1 of them done before, "
                                            "skipped)")
    assert summary_of(target)["status"] == "completed"
