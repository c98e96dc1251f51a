"""vae-bench's trainer, driven epoch by epoch from a benchmark: each call trains one more epoch
(resuming the run folder's checkpoint, which is bitwise exact on the CPU), so that several loops
can take turns on a host whose load drifts."""

from __future__ import annotations

import argparse
import contextlib
import os
import tempfile
import time
from pathlib import Path

import torch

from benchkit.machine import CpuMeter, load_now, merge_cpu, resolve_device, synchronize

# The MNIST MLP that scripts/bench.py sets against pytorch/examples' vae/main.py.
MLP_OVERRIDES = ["trainer.batch_size=128", "model=mlp", "optim=adam", "optim.lr=1e-3",
                 "param=logvar", "likelihood=bernoulli"]


def compose_trainer_config(args: argparse.Namespace, data: dict, diagnostics: bool,
                           extra: list[str] | None = None,
                           model_overrides: list[str] | None = None):
    """The trainer's config for a benchmark loop: `model_overrides` (the MNIST MLP unless given),
    the data's overrides, the common options in `args` (epochs, device, seed, compile,
    precision, threads, steps), then `extra`. Checked as `vae-bench train` checks it."""
    from hydra import compose, initialize_config_dir

    import vae_bench.cli  # noqa: F401  (registers the schema and the job-name resolver)
    from vae_bench.config import config_dir
    from vae_bench.validation import validate

    overrides = [
        f"trainer.epochs={args.epochs}", f"trainer.device={args.device}", f"seed={args.seed}",
        f"trainer.compile={str(args.compile).lower()}", f"trainer.precision={args.precision}",
        *(MLP_OVERRIDES if model_overrides is None else model_overrides), "log.quiet=true",
        # The final IWAE is not what this measures: keep it tiny (scripts/bench_iwae.py times it).
        "eval.iwae_k=1", "eval.iwae_max_examples=100",
        f"log.diagnostics={str(diagnostics).lower()}",
    ]
    if args.threads:
        overrides.append(f"trainer.threads={args.threads}")
    if args.steps:
        overrides.append(f"trainer.max_steps_per_epoch={args.steps}")
    overrides += data["trainer_overrides"] + (extra or [])
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    validate(cfg)
    return cfg, overrides


@contextlib.contextmanager
def timed_end_epoch(records: list[float]):
    """Wrap vae_bench.train.end_epoch (looked up at call time by train()) to time it."""
    import vae_bench.train as train_module

    original = train_module.end_epoch

    def wrapper(run, *args, **kwargs):
        start = time.perf_counter()
        try:
            return original(run, *args, **kwargs)
        finally:
            synchronize(run.device)
            records.append(time.perf_counter() - start)

    train_module.end_epoch = wrapper
    try:
        yield
    finally:
        train_module.end_epoch = original


class TrainerLoop:
    """One trainer run, trained epoch by epoch: `run(n)` trains up to n epochs in total, resuming
    the run folder's checkpoint after the first call. The run folder holds the resolved
    config.yaml, as a `vae-bench train` run folder does."""

    def __init__(self, args: argparse.Namespace, data: dict, diagnostics: bool, workdir: Path,
                 extra: list[str] | None = None, model_overrides: list[str] | None = None):
        from vae_bench.train import save_resolved_config

        self.cfg, self.overrides = compose_trainer_config(args, data, diagnostics, extra,
                                                          model_overrides)
        self.run_dir = Path(tempfile.mkdtemp(prefix="run_", dir=workdir))
        save_resolved_config(self.cfg, self.run_dir)
        self.seed = args.seed
        self.device = resolve_device(args.device)
        self.epochs_done = 0
        self.epoch_seconds: list[float] = []
        self.eval_seconds: list[float] = []
        self.test_elbo: dict[int, float] = {}
        self.cpu: list[dict] = []
        self.total_wall_seconds = 0.0
        self.load_before = load_now()

    def run(self, epochs: int) -> None:
        from omegaconf import OmegaConf

        from vae_bench.tracking import read_metrics
        from vae_bench.train import train

        cfg = OmegaConf.merge(self.cfg, {"trainer": {"epochs": epochs}})
        if not self.epochs_done:
            torch.manual_seed(self.seed)
        end_epoch_seconds: list[float] = []
        meter = CpuMeter()
        start = time.perf_counter()
        with timed_end_epoch(end_epoch_seconds):
            summary = train(cfg, self.run_dir, resume=self.epochs_done > 0, quiet=True)
        self.total_wall_seconds += time.perf_counter() - start
        self.cpu.append(meter.stop())
        if summary["status"] != "completed":
            raise RuntimeError(f"trainer run ended with status {summary['status']}: {summary}")
        if summary.get("eval/iwae_seconds") is not None:  # the tiny IWAE at a call's last epoch
            end_epoch_seconds[-1] -= summary["eval/iwae_seconds"]
        self.eval_seconds += end_epoch_seconds
        self.epoch_seconds = list(summary["train/epoch_seconds_all"])
        self.test_elbo = {int(r["epoch"]): float(r["test/elbo"])
                          for r in read_metrics(self.run_dir) if "test/elbo" in r}
        self.epochs_done = epochs

    def result(self) -> dict:
        return {"epoch_seconds": self.epoch_seconds, "eval_seconds": self.eval_seconds,
                "test_elbo": self.test_elbo, "total_wall_seconds": self.total_wall_seconds,
                "run_dir": str(self.run_dir), "overrides": self.overrides,
                "load_before": self.load_before, "load_after": load_now(),
                "cpu": merge_cpu(self.cpu)}


def run_trainer(args: argparse.Namespace, data: dict, diagnostics: bool, workdir: Path) -> dict:
    """One whole trainer run of args.epochs epochs in a single train() call."""
    loop = TrainerLoop(args, data, diagnostics, workdir)
    loop.run(args.epochs)
    return loop.result()


def pick_data() -> dict:
    """Real MNIST from $VAE_BENCH_DATA, else synthetic images of MNIST's shape (said so)."""
    from vae_bench.data import load_splits

    root = os.environ.get("VAE_BENCH_DATA")
    if root:
        # Fail loudly (DataError) rather than fall back when the variable points nowhere.
        load_splits("mnist", root)
        return {"kind": "mnist", "root": root, "num_train": 60000,
                "trainer_overrides": ["dataset=mnist", f"data.root={root}"],
                "note": f"real MNIST from $VAE_BENCH_DATA={root}"}
    overrides = ["dataset=synthetic", "dataset.num_train=60000", "dataset.num_test=10000",
                 "dataset.image_size=28", "dataset.channels=1"]
    return {"kind": "synthetic", "num_train": 60000, "trainer_overrides": overrides,
            "note": "$VAE_BENCH_DATA is not set: SYNTHETIC data with MNIST's shape (60000 + "
                    "10000 images of 1x28x28) for (a)/(b), and an in-memory torchvision MNIST "
                    "of the same images for (c). Test ELBOs are not comparable to MNIST's."}
