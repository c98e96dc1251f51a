"""TensorBoard's HParams row of a run: which columns a sweep varies (the tab shows the first five
hyperparameters, varied ones first), and the variant column."""

from __future__ import annotations

from pathlib import Path

import yaml

from vae_bench.hparams import run_variant, sweep_keys, varied_hparams


def sweep_with(tmp_path: Path, task: list[str], params: dict | None = None) -> Path:
    """A sweep folder as Hydra leaves it: multirun.yaml, and one job folder to ask about."""
    sweep = tmp_path / "sweep"
    hydra = {"overrides": {"task": task}, "sweeper": {"params": params}}
    (sweep / "job").mkdir(parents=True)
    (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": hydra}))
    return sweep / "job"


def test_the_keys_swept_on_the_command_line_are_varied(tmp_path: Path) -> None:
    job = sweep_with(tmp_path, ["param=logvar,logstd", "optim.lr=0.001,0.01", "seed=0",
                                "likelihood=gaussian_pixel", "log.quiet=true",
                                "hydra.job.config.override_dirname.exclude_keys=[seed]"])
    assert sweep_keys(job.parent) == {"param", "optim.lr"}
    # Constant overrides (seed=0, likelihood) are not varied: they would take a column.
    assert varied_hparams(job) == {"param", "lr", "status"}


def test_a_presets_sweeper_params_are_varied(tmp_path: Path) -> None:
    job = sweep_with(tmp_path, ["experiment=lr_stability", "model.latent_dim=8,16"],
                     {"optim": "sgd,adam", "optim.lr": "0.1,1", "param": "logvar,logstd",
                      "seed": "0,1,2"})
    assert varied_hparams(job) == {"optimizer", "lr", "param", "seed", "latent_dim", "status"}


def test_a_variant_sweep_varies_what_variants_set(tmp_path: Path) -> None:
    job = sweep_with(tmp_path, ["experiment=decoder_variance"],
                     {"variant": "decoder_variance_fixed,decoder_variance_shared", "seed": "0,1"})
    assert {"variant", "likelihood", "seed", "status"} <= varied_hparams(job)
    (job / ".hydra").mkdir()
    (job / ".hydra" / "overrides.yaml").write_text(
        yaml.safe_dump(["variant=decoder_variance_fixed", "seed=1"]))
    assert run_variant(job) == {"variant": "decoder_variance_fixed"}


def test_a_single_run_varies_the_benchmark_axes(tmp_path: Path) -> None:
    assert sweep_keys(tmp_path) is None
    assert varied_hparams(tmp_path / "run") == {"param", "seed", "status"}
    assert run_variant(tmp_path / "run") == {}
