"""`vae-bench train` end to end, in subprocesses, on synthetic data and on tiny files in the
MNIST and CIFAR-10 formats; event files are read back with TensorBoard's own reader."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import TINY, TINY_ON_FILES, compose_config, event_scalars, run_cli
from datafiles import write_cifar, write_idx_set

CORE_TAGS = {
    "train/elbo", "train/recon_nll", "train/kl",
    "test/elbo", "test/recon_nll", "test/kl", "test/nll_iwae",
    "train/epoch_seconds", "train/examples_per_s",
}

pytestmark = pytest.mark.slow


def only_run(folder: Path) -> Path:
    runs = [p.parent for p in folder.rglob("summary.json")]
    assert len(runs) == 1, runs
    return runs[0]


def check_run_folder(run_dir: Path, epochs: int) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert summary["epoch"] == epochs
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    scalars = event_scalars(run_dir)
    assert CORE_TAGS <= set(scalars), CORE_TAGS - set(scalars)
    assert len(scalars["test/elbo"]) == epochs  # one evaluation per epoch
    timing = {"train/epoch_seconds", "train/examples_per_s"}  # summarised by their median
    for tag in CORE_TAGS - timing:  # summary.json holds the final value of every tag, same name
        assert summary[tag] == pytest.approx(scalars[tag][-1][1], rel=1e-6), tag
    for tag in timing:
        per_epoch = sorted(value for _, value in scalars[tag])
        assert per_epoch[0] * (1 - 1e-6) <= summary[tag] <= per_epoch[-1] * (1 + 1e-6), tag
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {"step", "epoch"} <= set(records[0])
    assert any("test/elbo" in r for r in records)
    # The test ELBO is a bound on log p(x) that the IWAE estimate tightens.
    assert summary["test/nll_iwae"] <= -summary["test/elbo"] + 1.0
    return summary


def test_synthetic(tmp_path: Path) -> None:
    result = run_cli(["train", *TINY, "hydra.run.dir=run"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    check_run_folder(tmp_path / "run", epochs=2)


def test_tiny_mnist_format_files(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "data", n_train=96, n_test=32, gz=True)
    args = ["train", *TINY_ON_FILES, "dataset=mnist", "data.root=data", "hydra.run.dir=run"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    check_run_folder(tmp_path / "run", epochs=2)


def test_tiny_fashion_mnist_with_binarization_and_mlp_iwae(tmp_path: Path) -> None:
    write_idx_set(tmp_path / "data", folder="FashionMNIST", n_train=64, n_test=32)
    args = ["train", *TINY_ON_FILES, "dataset=fashion_mnist", "dataset.binarize=true",
            "model=mlp_iwae", "data.root=data", "hydra.run.dir=run"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    check_run_folder(tmp_path / "run", epochs=2)


def test_tiny_cifar_format_files_with_conv_and_gaussian(tmp_path: Path) -> None:
    write_cifar(tmp_path / "data", n_per_batch=16)
    args = ["train", *TINY_ON_FILES, "dataset=cifar10", "model=conv", "likelihood=gaussian_pixel",
            "likelihood.param=softplus_std", "param=softplus_var", "data.root=data",
            "hydra.run.dir=run"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = check_run_folder(tmp_path / "run", epochs=2)
    assert "grad/norm_decoder_sigma" in summary  # the per-pixel σₓ head is tracked


def test_multirun_names_runs_by_overrides(tmp_path: Path) -> None:
    args = ["train", "-m", *TINY, "trainer.epochs=1", "param=logvar,logstd", "seed=0,1",
            "hydra.sweep.dir=sweep"]
    result = run_cli(args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "sweep"
    runs = sorted(p.parent.name for p in sweep.rglob("summary.json"))
    assert runs == ["param=logstd,seed=0", "param=logstd,seed=1",
                    "param=logvar,seed=0", "param=logvar,seed=1"]
    # TensorBoard's runs are the folders holding event files: exactly the four named runs.
    event_dirs = {p.parent for p in sweep.rglob("events.out.tfevents*")}
    assert sorted(d.relative_to(sweep).as_posix() for d in event_dirs) == runs


def test_cfg_job_and_help_behave_as_in_hydra(tmp_path: Path) -> None:
    result = run_cli(["train", "param=softplus_std", "--cfg", "job"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "name: softplus_std" in result.stdout
    assert not (tmp_path / "outputs").exists()  # printing the config trains nothing
    result = run_cli(["train", "--help"], cwd=tmp_path)
    assert result.returncode == 0
    for group in ("dataset", "model", "param", "likelihood", "optim"):
        assert f"\n  {group} " in result.stdout  # one line per group, its choices below
    assert "softplus_var" in result.stdout


def test_unknown_command_is_an_error(tmp_path: Path) -> None:
    result = run_cli(["trian"], cwd=tmp_path)
    assert result.returncode == 2
    assert "trian" in result.stderr and "train" in result.stderr


def real_mnist_root() -> Path | None:
    root = os.environ.get("VAE_BENCH_DATA")
    if root and (Path(root) / "MNIST" / "raw").is_dir():
        return Path(root).resolve()
    return None


@pytest.mark.skipif(real_mnist_root() is None, reason="real MNIST not found under $VAE_BENCH_DATA")
def test_real_mnist_one_epoch_matches_the_reference(tmp_path: Path) -> None:
    """pytorch/examples' VAE reaches a test loss of ≈128.4 nats after one epoch on this setting."""
    args = ["train", "dataset=mnist", "model=mlp", "param=logvar", "likelihood=bernoulli",
            "trainer.batch_size=128", "optim=adam", "optim.lr=1e-3", "trainer.epochs=1",
            f"data.root={real_mnist_root()}", "eval.iwae_k=10", "log.quiet=true",
            "hydra.run.dir=run"]
    result = run_cli(args, cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed"
    assert -summary["test/elbo"] <= 132.0


@pytest.mark.parametrize("clip", [None, 1e-3])
def test_grad_clip_bounds_the_update(clip, tmp_path):
    """Plain SGD moves the parameters by lr · g · min(1, clip/‖g‖): one step with a tiny clip
    moves them by exactly lr · clip in total; without a clip, by lr · ‖g‖ > lr · clip."""
    import torch

    from vae_bench.models import VAE
    from vae_bench.train import train

    lr = 0.1
    overrides = [*TINY, "optim=sgd", f"optim.lr={lr}", "optim.momentum=0.0",
                 "trainer.epochs=1", "trainer.max_steps_per_epoch=1",
                 f"optim.grad_clip={'null' if clip is None else clip}"]
    cfg = compose_config(overrides)
    torch.manual_seed(cfg.seed)  # as the trainer's setup does before building the model
    initial = VAE(cfg, (cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size))
    summary = train(cfg, tmp_path / "run", quiet=True)
    assert summary["status"] == "completed"
    trained = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)["model"]
    moved = torch.linalg.vector_norm(torch.stack([
        torch.linalg.vector_norm(trained[name] - value)
        for name, value in initial.state_dict().items()]))
    if clip is None:
        assert moved > 10 * lr * 1e-3
    else:
        assert moved.item() == pytest.approx(lr * clip, rel=1e-3)


@pytest.mark.skipif(not any(shutil.which(c) for c in ("c++", "g++", "clang++")),
                    reason="torch.compile's CPU backend needs a C++ compiler")
def test_compile_trains_through_a_short_last_batch_reproducibly(tmp_path):
    """trainer.compile=true on an epoch whose last batch is smaller (80 = 2 x 32 + 16): the
    compiled step runs it, a second run with the same seed ends bitwise equal, and the model is
    eager's up to the noise draws (compiled code draws ε with inductor's own generator)."""
    from vae_bench.train import train

    overrides = [*TINY, "trainer.epochs=1", "dataset.num_train=80", "trainer.batch_size=32"]
    eager = train(compose_config(overrides), tmp_path / "eager", quiet=True)
    compiled = [train(compose_config([*overrides, "trainer.compile=true"]),
                      tmp_path / f"compiled_{i}", quiet=True) for i in range(2)]
    assert compiled[0]["status"] == "completed"
    assert compiled[0]["step"] == eager["step"] == 3
    for tag in ("test/elbo", "test/kl", "test/nll_iwae", "train/elbo"):
        assert compiled[0][tag] == compiled[1][tag], tag
    assert compiled[0]["test/elbo"] == pytest.approx(eager["test/elbo"], rel=0.01)
