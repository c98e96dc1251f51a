"""A run's row in TensorBoard's HParams tab: its hyperparameters, and which of them its sweep
varies. The HParams tab shows the first five hyperparameter columns only, varied ones first, so
marking what a sweep really varies (and nothing else) is what puts those columns on screen."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

HPARAM_METRICS = ["test/elbo", "test/nll_iwae", "test/kl", "latent/active_units"]


# Override keys that vary a run's hparams entry, by hparam name.
HPARAM_KEYS = {"dataset": "dataset", "model": "model", "param": "param", "param.name": "param",
               "likelihood": "likelihood", "optim": "optimizer", "optim.name": "optimizer",
               "optim.lr": "lr", "trainer.batch_size": "batch_size",
               "model.latent_dim": "latent_dim", "seed": "seed", "trainer.epochs": "epochs",
               "eval.iwae_k": "iwae_k", "variant": "variant", "model.name": "model",
               "likelihood.name": "likelihood", "dataset.name": "dataset"}
# What a named variant sets (configs/variant/): its own column, and what its choices vary.
VARIANT_HPARAMS = ("variant", "likelihood", "optimizer", "lr", "param")


def sweep_keys(sweep_dir: Path) -> set[str] | None:
    """The keys a multirun sweeps (several values on its command line, or in a preset's
    `hydra.sweeper.params`), from the multirun.yaml Hydra writes into the sweep folder; None
    when `sweep_dir` holds no sweep."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    multirun_file = sweep_dir / "multirun.yaml"
    if not multirun_file.is_file():
        return None
    hydra_cfg = OmegaConf.load(multirun_file).hydra
    params = OmegaConf.select(hydra_cfg, "sweeper.params") or {}
    keys = {str(key) for key in params}
    try:
        overrides = OverridesParser.create().parse_overrides(list(hydra_cfg.overrides.task))
    except Exception:  # Hydra parsed this line once already; keep what the preset says
        return keys
    return keys | {o.get_key_element().lstrip("+~") for o in overrides if o.is_sweep_override()}


def varied_hparams(run_dir: Path) -> set[str]:
    """The hparams a sweep varies (TensorBoard shows those columns first, and the first five
    columns only, so nothing it does not vary may take their place), plus the status. A single
    run varies the benchmark's axes: param and seed."""
    swept = sweep_keys(run_dir.parent)
    if swept is None:
        return {"param", "seed", "status"}
    varied = {"status"}
    for key in swept:
        group = key.split("@", 1)[0]
        if group == "variant":
            varied.update(VARIANT_HPARAMS)
        elif group in HPARAM_KEYS:
            varied.add(HPARAM_KEYS[group])
    return varied


def run_variant(run_dir: Path) -> dict[str, str]:
    """{"variant": name} for a run made with `variant=name` (configs/variant/), else {}."""
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    if overrides_file.is_file():
        for override in OmegaConf.load(overrides_file):
            key, _, value = str(override).partition("=")
            if key.lstrip("+~") == "variant" and value not in ("", "null"):
                return {"variant": value}
    return {}


def hparams_row(cfg: DictConfig, run_dir: Path, status: str) -> dict:
    return {**hparams_of(cfg), **run_variant(run_dir), "status": status}


def hparams_of(cfg: DictConfig) -> dict:
    """The run's HParams row. TensorBoard prints every number with five significant digits
    (seed 0 as 0.0000, batch size 128 as 128.00), so whole numbers go in as text."""
    return {
        "dataset": cfg.dataset.name, "model": cfg.model.name, "param": cfg.param.name,
        "likelihood": cfg.likelihood.name, "optimizer": cfg.optim.name, "lr": cfg.optim.lr,
        "batch_size": str(cfg.trainer.batch_size), "latent_dim": str(cfg.model.latent_dim),
        "seed": str(cfg.seed), "epochs": str(cfg.trainer.epochs),
        "iwae_k": str(cfg.eval.iwae_k),
    }
