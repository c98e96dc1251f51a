"""Sweep jobs train in child processes: a killed job leaves the sweep going, the sweep says where
it is and how its jobs ended, jobs side by side neither slow each other's threads nor change
each other's results, and the GPU memory cap; plus the progress bars of the evaluations."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config, run_cli, start_cli

import vae_bench.cli
import vae_bench.train as train_module
from vae_bench import jobs
from vae_bench.config import ConfigError
from vae_bench.validation import validate

TIMINGS = {"train/epoch_seconds", "train/epoch_seconds_all", "train/examples_per_s",
           "eval/iwae_seconds"}
TIMEOUT = 300


def summary_of(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def logged(run_dir: Path) -> bool:
    path = run_dir / "metrics.jsonl"
    return path.is_file() and bool(path.read_text().strip())


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def closing_counts(output: str) -> str:
    (line,) = [line for line in output.splitlines() if "sweep finished" in line]
    return line.split("sweep finished, ", 1)[1]


# ---- a killed job -------------------------------------------------------------------------------


@pytest.mark.slow
def test_joblib_sweep_survives_a_killed_training_process(tmp_path: Path) -> None:
    """SIGKILL (what the OOM killer sends) to the training process of one job of a 4-job joblib
    sweep: the other jobs complete, the killed one is recorded and reported as `killed`, the
    closing line counts it, and the same command again finishes only that job."""
    sweep = tmp_path / "sweep"
    command = ["train", "-m", *TINY, "dataset.num_train=512", "trainer.batch_size=4",
               "trainer.epochs=1", "seed=0,1,2,3", "hydra/launcher=joblib",
               "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"]
    proc = start_cli(command, tmp_path)
    target = sweep / "seed=1"
    killed_pid = None
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        summary = summary_of(target)
        if summary.get("status") == "running" and logged(target):  # inside the training loop
            killed_pid = summary["pid"]
            scores = [int(Path(f"/proc/{pid}/oom_score_adj").read_text())
                      for pid in (killed_pid, parent_of(killed_pid))]
            parent_command = Path(f"/proc/{parent_of(killed_pid)}/cmdline").read_text()
            os.kill(killed_pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert killed_pid is not None, "the job never reached its training loop"
    assert scores[0] == scores[1] + jobs.OOM_SCORE_BIAS  # the OOM killer's choice in the job
    assert "vae_bench.zygote" in parent_command  # a fork of the worker's zygote
    assert proc.returncode == 0, err[-3000:]
    statuses = {seed: summary_of(sweep / f"seed={seed}").get("status") for seed in range(4)}
    assert statuses == {0: "completed", 1: "killed", 2: "completed", 3: "completed"}
    killed = summary_of(target)
    assert (killed["signal"], killed["pid"]) == ("SIGKILL", killed_pid)
    assert out.splitlines()[0] == f"vae-bench: sweep folder: {sweep}"  # shown despite log.quiet
    assert closing_counts(out) == ("4 jobs: 3 completed, 0 diverged, 0 failed, 0 interrupted, "
                                   "1 killed")

    vae_bench.cli.main(["report", str(sweep)])
    with open(sweep / "report.csv", newline="") as handle:
        reported = {row["run"]: row["status"] for row in csv.DictReader(handle)}
    assert reported == {f"seed={seed}": status for seed, status in statuses.items()}

    finished = {seed: (sweep / f"seed={seed}" / "metrics.jsonl").read_text() for seed in (0, 2, 3)}
    again = run_cli(command, tmp_path, timeout=TIMEOUT)
    assert again.returncode == 0, again.stderr[-3000:]
    assert summary_of(target)["status"] == "completed"
    assert all((sweep / f"seed={seed}" / "metrics.jsonl").read_text() == text
               for seed, text in finished.items()), "a completed job was trained again"
    assert (again.stdout + again.stderr).count("already completed, skipped") == 3
    assert closing_counts(again.stdout) == ("4 jobs: 4 completed, 0 diverged, 0 failed, "
                                            "0 interrupted, 0 killed (3 of them done before, "
                                            "skipped)")


def test_a_stop_signal_to_the_waiting_parent_reaches_the_child(tmp_path: Path) -> None:
    """SLURM's time-limit SIGTERM goes to the job's process, which only waits: the child must
    get it, to checkpoint and end `interrupted`."""
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *_: sys.exit(7))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n")])
    before = signal.getsignal(signal.SIGTERM)
    with jobs.forwarding_stop_signals(child):
        while not ready.exists():
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGTERM)  # this process survives: the handler forwards it
        assert child.wait(timeout=30) == 7
    assert signal.getsignal(signal.SIGTERM) is before


# ---- jobs side by side: threads and results -------------------------------------------------


@pytest.mark.slow
def test_jobs_side_by_side_keep_their_threads_and_their_results(tmp_path: Path) -> None:
    """Two jobs at a time with one thread each: each job trains with exactly one thread (as its
    summary and train.log record), and seed 0 ends bitwise equal to seed 0 trained alone."""
    sweep = tmp_path / "sweep"
    result = run_cli(["train", "-m", *TINY, "seed=0,1", "hydra/launcher=joblib",
                      "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}"], tmp_path,
                     timeout=TIMEOUT)
    assert result.returncode == 0, result.stderr[-3000:]
    for seed in (0, 1):
        run_dir = sweep / f"seed={seed}"
        assert summary_of(run_dir)["train/threads"] == 1
        assert "device cpu, 1 CPU threads" in (run_dir / "train.log").read_text()

    alone = train_module.train(compose_config([*TINY, "seed=0"]), tmp_path / "alone",
                               quiet=True)
    beside = summary_of(sweep / "seed=0")
    compared = [k for k in alone if k not in TIMINGS]
    assert {"test/elbo", "test/nll_iwae", "train/elbo", "grad/norm_total"} <= set(compared)
    assert {k: beside[k] for k in compared} == {k: alone[k] for k in compared}
    assert beside["test/elbo"] != summary_of(sweep / "seed=1")["test/elbo"]  # seeds differ


# ---- GPU memory cap -----------------------------------------------------------------------------


def test_joblib_gpu_launcher_preset() -> None:
    from hydra import compose, initialize_config_dir

    from vae_bench.config import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=joblib_gpu"],
                      return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs == 4


@pytest.mark.parametrize("fraction", [0, -0.5, 1.5])
def test_gpu_memory_fraction_out_of_range_is_refused(fraction) -> None:
    cfg = compose_config([*TINY, f"trainer.gpu_memory_fraction={fraction}"])
    with pytest.raises(ConfigError, match=r"trainer.gpu_memory_fraction=.* must be in \(0, 1\]"):
        validate(cfg)


def test_gpu_memory_fraction_caps_a_cuda_device_and_is_ignored_on_the_cpu(monkeypatch,
                                                                          caplog) -> None:
    calls = []
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda fraction, device: calls.append((fraction, device)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cfg = compose_config([*TINY, "trainer.gpu_memory_fraction=0.25", "trainer.device=auto"])
    validate(cfg)
    device = train_module.pick_device(cfg.trainer.device)
    train_module.bound_gpu_memory(cfg.trainer.gpu_memory_fraction, device)
    assert calls == [(0.25, torch.device("cuda"))]

    calls.clear()
    with caplog.at_level(logging.INFO, logger="vae_bench.train"):
        train_module.bound_gpu_memory(0.25, torch.device("cpu"))
    assert calls == []
    assert "trainer.gpu_memory_fraction=0.25 ignored: the device is cpu" in caplog.text
    train_module.bound_gpu_memory(None, torch.device("cuda"))
    assert calls == []


def test_training_applies_the_configured_gpu_memory_fraction(tmp_path, monkeypatch) -> None:
    applied = []
    monkeypatch.setattr(train_module, "bound_gpu_memory",
                        lambda fraction, device: applied.append((fraction, device.type)))
    cfg = compose_config([*TINY, "trainer.epochs=1", "trainer.gpu_memory_fraction=0.5",
                          "trainer.device=cpu"])
    assert train_module.train(cfg, tmp_path / "run", quiet=True)["status"] == "completed"
    assert applied == [(0.5, "cpu")]


# ---- nothing silent -----------------------------------------------------------------------------


def test_evaluations_show_progress_bars_unless_quiet(tmp_path: Path, capsys,
                                                    monkeypatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # bars are drawn on terminals only
    cfg = compose_config([*TINY, "trainer.epochs=1", "eval.iwae_k=7"])
    train_module.train(cfg, tmp_path / "loud", quiet=False)
    loud = capsys.readouterr().err
    assert "IWAE k=7" in loud and "test:" in loud and "epoch 1/1" in loud
    train_module.train(cfg, tmp_path / "quiet", quiet=True)
    quiet = capsys.readouterr().err
    assert "IWAE" not in quiet and "test:" not in quiet


@pytest.mark.slow
def test_a_quiet_single_run_prints_its_folder(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    result = run_cli(["train", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == f"vae-bench: run folder: {run_dir}"


# ---- start-up -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sweep_composes_each_jobs_config_once(tmp_path: Path, monkeypatch) -> None:
    """Hydra's sweeper would compose every job's config a first time only to check it, before
    any job starts (minutes for lr_stability); vae-bench checked the command line already."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    composed = []
    original = ConfigLoaderImpl.load_sweep_config

    def counting(self, master_config, sweep_overrides):
        composed.append(list(sweep_overrides))
        return original(self, master_config, sweep_overrides)

    monkeypatch.setattr(ConfigLoaderImpl, "load_sweep_config", counting)
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    vae_bench.cli.main(["train", "-m", *TINY, "trainer.epochs=1", "seed=0,1,2",
                        f"hydra.sweep.dir={sweep}"])
    assert sorted(overrides[-1] for overrides in composed) == ["seed=0", "seed=1", "seed=2"]
    assert all(summary_of(sweep / f"seed={seed}")["status"] == "completed" for seed in range(3))
