"""vae-bench sets OpenMP's wait policy to PASSIVE before torch loads (idle threads sleep instead
of spinning, which on a loaded machine held the cores their partners needed), keeps a policy the
user set, and the policy changes no result."""

from __future__ import annotations

import os
import subprocess
import sys

import torch
from conftest import run_cli

PROBE = ("import os, sys, vae_bench; print(os.environ['OMP_WAIT_POLICY'], "
         "'torch' in sys.modules)")


def probe(env_update: dict) -> str:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env.update(env_update)
    return subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, check=True, timeout=120).stdout.strip()


def test_passive_is_set_before_torch_loads_and_a_users_policy_is_kept() -> None:
    assert probe({}) == "PASSIVE False"
    assert probe({"OMP_WAIT_POLICY": "ACTIVE"}) == "ACTIVE False"


def test_the_wait_policy_changes_no_result(tmp_path) -> None:
    """Two threads, so that the convolutions' parallel regions and barriers do run."""
    args = ["train", "dataset=synthetic", "dataset.num_train=128", "dataset.num_test=32",
            "dataset.image_size=16", "dataset.channels=3", "model=conv",
            "likelihood=gaussian_shared", "trainer.epochs=1", "trainer.batch_size=32",
            "trainer.threads=2", "eval.iwae_k=2", "log.quiet=true", "log.images=false"]
    for policy in ("ACTIVE", "PASSIVE"):
        process = run_cli([*args, f"hydra.run.dir={policy}"], cwd=tmp_path,
                          env={"OMP_WAIT_POLICY": policy})
        assert process.returncode == 0, process.stderr
    active, passive = (torch.load(tmp_path / policy / "checkpoints" / "last.pt",
                                  weights_only=False)["model"] for policy in ("ACTIVE", "PASSIVE"))
    for name, value in active.items():
        assert torch.equal(value, passive[name]), name
