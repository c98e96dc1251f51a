"""Shared helpers: compose configs in-process, run the CLI in a subprocess, read event files."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

import vae_bench.cli  # noqa: F401  (registers the schema and the job-name resolver)
from vae_bench.config import config_dir

TINY = ["dataset=synthetic", "dataset.num_train=256", "dataset.num_test=64",
        "trainer.epochs=2", "trainer.batch_size=32", "eval.iwae_k=4", "log.quiet=true",
        "log.grad_every=4", "log.snr_window=3", "log.every_steps=4", "log.hist_every=4",
        "trainer.threads=1"]  # tiny models gain nothing from threads that compete with others
# TINY for a data set read from files: the synthetic sizes are keys of dataset=synthetic only.
TINY_ON_FILES = [override for override in TINY if not override.startswith("dataset")]


def compose_config(overrides: list[str]):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def run_cli(args: list[str], cwd: Path, env: dict | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "vae_bench", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def start_cli(args: list[str], cwd: Path) -> subprocess.Popen:
    """`vae-bench <args>` started in the background, for tests that signal it while it runs."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, "-m", "vae_bench", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def event_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars as TensorBoard itself reads them from the run folder."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    return {tag: [(e.step, e.value) for e in accumulator.Scalars(tag)]
            for tag in accumulator.Tags()["scalars"]}


def event_accumulator(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "images": 0,
                                                                "histograms": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)
