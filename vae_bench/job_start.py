"""Where sweep jobs start: the zygote's target and preloads, and the environment a job gets.

Standard library only, so that `vae-bench train -m` can start its zygote (start_early) before
the CLI imports torch, Hydra and the rest: the zygote's imports (seconds) then run on another
core while this process imports the CLI and Hydra composes the sweep.
"""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path

import vae_bench  # sets the OpenMP wait policy the zygote's torch must load with
from vae_bench import zygote

JOB_START = "VAE_BENCH_JOB_START"  # "spawn": every job in a fresh interpreter, no zygote
ZYGOTE_TARGET = "vae_bench.jobs:child_main"
# What the zygote imports before it forks: everything a job imports, so that no job imports
# anything. Besides the training code, what a job would import on first use: torch's compiler
# (torch.optim imports it when an optimizer is made: sympy and all, seconds), the image writers
# of PIL and matplotlib, tqdm's lock, TensorBoard's hparams, torch.save's settings, and what
# OmegaConf loads to merge a saved config onto its schema.
ZYGOTE_PRELOAD = ["vae_bench.train", "torch._dynamo", "matplotlib.backends.backend_agg",
                  "multiprocessing.synchronize", "tensorboard.plugins.hparams.metadata",
                  "torch.utils.serialization", "PIL.BmpImagePlugin", "PIL.GifImagePlugin",
                  "PIL.JpegImagePlugin", "PIL.PpmImagePlugin", "PIL.features", "omegaconf._impl",
                  "antlr4.LL1Analyzer"]
# Hydra flags that print something and run no job.
NO_JOB_FLAGS = ("-h", "--help", "--hydra-help", "-i", "--info", "-c", "--cfg", "-sc",
                "--shell-completion", "--version")


def child_environment() -> dict[str, str]:
    """The parent's environment, with this vae_bench first on the path: the child must run the
    code the parent runs, not another installed copy."""
    env = dict(os.environ)
    root = str(Path(vae_bench.__file__).resolve().parent.parent)
    site_dirs = {*site.getsitepackages(), site.getusersitepackages()}
    if root not in site_dirs:  # a site dir ahead of the standard library could shadow it
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env


def zygote_allowed() -> bool:
    return sys.platform == "linux" and os.environ.get(JOB_START) != "spawn"


def jobs_run_here(argv: list[str]) -> bool:
    """Whether `vae-bench <argv>` runs sweep jobs from this process: `train -m` under the
    default launcher (`local`) or Hydra's `basic`. joblib's workers and SLURM's tasks each
    start a zygote of their own, and a single run trains in this process."""
    if not argv or argv[0] != "train":
        return False
    rest = argv[1:]
    if not any(arg in ("-m", "--multirun") for arg in rest):
        return False
    if any(arg.split("=")[0] in NO_JOB_FLAGS for arg in rest):
        return False
    launchers = [arg.split("=", 1)[1] for arg in rest
                 if arg.split("=", 1)[0].lstrip("+~") == "hydra/launcher" and "=" in arg]
    return not launchers or launchers[-1] in ("local", "basic")


def start_early(argv: list[str]) -> zygote.Zygote | None:
    """This command's zygote, started now, where its jobs will run here; None otherwise, or
    where it cannot start (the first job then starts one, and says why if that fails too)."""
    if not (zygote_allowed() and jobs_run_here(argv)):
        return None
    try:
        return zygote.Zygote(ZYGOTE_TARGET, ZYGOTE_PRELOAD, child_environment())
    except zygote.ZygoteUnavailable:
        return None
