"""The config schema (Hydra structured configs): types, key names and defaults.

Types and key names are enforced by Hydra when the YAML files are merged into `TrainConfig`;
value ranges that a type cannot express are checked by `vae_bench.validation.validate`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from vae_bench.data import DATASET_NAMES
from vae_bench.likelihoods import LIKELIHOOD_NAMES
from vae_bench.parameterizations import SIGMA_MAPS

MODEL_NAMES = ("mlp", "mlp_iwae", "conv")
OPTIMIZER_NAMES = ("adam", "sgd")
ACTIVATIONS = ("relu", "tanh")
PRECISIONS = ("fp32", "bf16")
ON_NONFINITE = ("stop", "skip")


class ConfigError(ValueError):
    """A config value is out of range; the message names each bad value and what is allowed."""


# Each group choice has a schema of its own (see GROUP_SCHEMAS): a key appears in a run's config
# only where the choice uses it, so `dataset.num_train` with dataset=mnist is refused instead of
# silently ignored.


@dataclass
class DatasetConfig:
    name: str = MISSING
    binarize: bool = False  # dynamic binarization, resampled every time a batch is drawn


@dataclass
class SyntheticDatasetConfig(DatasetConfig):
    """The images are generated from `seed` and these sizes."""

    num_train: int = 2048
    num_test: int = 512
    image_size: int = 28
    channels: int = 1


@dataclass
class ModelConfig:
    name: str = MISSING
    latent_dim: int = 20
    hidden: list[int] = field(default_factory=lambda: [400])
    activation: str = "relu"
    # The σ head's raw output s is multiplied by `sigma_head_scale`, and its initial weights by
    # `sigma_head_init_scale`: with these, logstd can be made update-for-update equal to logvar.
    sigma_head_scale: float = 1.0
    sigma_head_init_scale: float = 1.0
    # Start every input at this σ: the σ head's weights start at zero and its bias at the raw
    # output the σ-map turns into init_sigma. With the same value, all σ-maps start as the same
    # function (natural too: μ = η₁σ² = η₁ at σ = 1). null keeps PyTorch's default init.
    init_sigma: float | None = None


@dataclass
class ConvModelConfig(ModelConfig):
    channels: list[int] = field(default_factory=lambda: [32, 64])
    hidden: list[int] = field(default_factory=lambda: [256])  # one width: the dense layer


@dataclass
class SigmaMapOptions:
    """A σ-map without options (logvar, logstd); the subclasses add the options of the others."""

    name: str = MISSING


@dataclass
class FlooredSigmaMapOptions(SigmaMapOptions):
    floor: float = 1e-4


@dataclass
class SoftClampedLogvarOptions(SigmaMapOptions):
    min_logvar: float = -10.0
    max_logvar: float = 2.0


@dataclass
class SigmoidBoundedOptions(SigmaMapOptions):
    sigma_min: float = 1e-3
    sigma_max: float = 2.0


@dataclass
class LikelihoodConfig:
    name: str = MISSING


@dataclass
class FixedGaussianLikelihoodConfig(LikelihoodConfig):
    sigma: float = 0.1


@dataclass
class LearnedGaussianLikelihoodConfig(LikelihoodConfig):
    """σₓ is learned through the σ-map `param`, from the encoder's registry. `param` is a value,
    not a group, so the options of every map are here; `param` reads the ones it uses."""

    param: str = "logvar"
    # Where the learned σₓ starts: the shared value, or every pixel head's output bias (its
    # weights keep PyTorch's init), set to the raw output `param` maps to init_sigma. null: a raw
    # output of 0 (σₓ = 1 through logvar), which Adam leaves at most lr per step.
    init_sigma: float | None = None
    floor: float = 1e-4
    min_logvar: float = -10.0
    max_logvar: float = 2.0
    sigma_min: float = 1e-3
    sigma_max: float = 2.0


@dataclass
class DiscretizedLikelihoodConfig(LearnedGaussianLikelihoodConfig):
    """A probability per 8-bit pixel value. σₓ (the logistic's scale for discretized_logistic)
    comes from a decoder head per pixel through the σ-map `param` (scale=pixel), from one learned
    scalar through `param` (scale=shared), or is `sigma` (scale=fixed)."""

    scale: str = "pixel"
    sigma: float = 0.1  # read with scale=fixed only


@dataclass
class OptimConfig:
    name: str = MISSING
    lr: float = 1e-3
    weight_decay: float = 0.0
    grad_clip: float | None = None  # max global L2 norm; null disables clipping
    sigma_head_lr_mult: float = 1.0  # learning rate of the encoder σ head, relative to lr
    # none | burda | cosine: lr over the run's steps (vae_bench/schedules.py says exactly how)
    schedule: str = "none"


@dataclass
class AdamConfig(OptimConfig):
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class SGDConfig(OptimConfig):
    lr: float = 1e-2
    momentum: float = 0.0


@dataclass
class TrainerConfig:
    epochs: int = 10
    batch_size: int = 128
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch.set_num_threads; null keeps torch's default
    # Share of the GPU's memory one run may allocate (torch.cuda.set_per_process_memory_fraction),
    # so that several jobs of a sweep can share one GPU; null: no cap. Ignored on the CPU.
    gpu_memory_fraction: float | None = None
    compile: bool = False
    precision: str = "fp32"
    # model=conv in NHWC layout (torch.channels_last): faster convolutions on the CPU, but oneDNN
    # then sums in another order, so results differ from the default layout's in the last bits.
    channels_last: bool = False
    on_nonfinite: str = "stop"
    max_skips: int = 10  # with on_nonfinite=skip: stop after this many consecutive skipped steps
    check_every: int = 10  # steps between host reads of the non-finite flag (stop mode)
    max_steps_per_epoch: int | None = None  # cap for quick tries and tests


@dataclass
class EvalConfig:
    batch_size: int = 1000
    iwae_k: int = 1000
    iwae_chunk: int = 100  # importance samples held in memory at once
    # When IWAE (k = iwae_k) runs besides the last epoch: every N epochs (0: only at the end), or
    # at the epochs listed, e.g. [10,30,100,300]. Any: OmegaConf has no int-or-list type;
    # `validate` checks it.
    iwae_every: Any = 0
    # k of a second IWAE estimate after the last epoch, test/nll_iwae_final (e.g. 5000, as
    # Burda et al. report); null: none. test/nll_iwae keeps k = iwae_k at every epoch it is logged.
    iwae_k_final: int | None = None
    iwae_max_examples: int | None = None  # evaluate IWAE on the first N test examples only


@dataclass
class DataConfig:
    root: str = "${oc.env:VAE_BENCH_DATA,./data}"
    # Fetch a data set that is absent from `root` (torchvision; never over files already there).
    download: bool = True


@dataclass
class LogConfig:
    quiet: bool = False  # no progress bar or epoch lines on the console (the log file keeps them)
    every_steps: int = 100  # train scalars are means over windows of this many steps
    diagnostics: bool = True
    grad_every: int = 50
    snr_window: int = 10
    hist_every: int = 500
    images: bool = True


@dataclass
class TrainConfig:
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    param: SigmaMapOptions = MISSING
    likelihood: LikelihoodConfig = MISSING
    optim: OptimConfig = MISSING
    seed: int = 0
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data: DataConfig = field(default_factory=DataConfig)
    log: LogConfig = field(default_factory=LogConfig)


# group -> (the schema of a choice not listed, {choice: its own schema}); every choice of a group
# is listed in GROUP_CHOICES.
GROUP_SCHEMAS: dict[str, tuple[type, dict[str, type]]] = {
    "dataset": (DatasetConfig, {"synthetic": SyntheticDatasetConfig}),
    "model": (ModelConfig, {"conv": ConvModelConfig}),
    "param": (SigmaMapOptions, {
        "softplus_std": FlooredSigmaMapOptions, "softplus_var": FlooredSigmaMapOptions,
        "natural": FlooredSigmaMapOptions, "soft_clamped_logvar": SoftClampedLogvarOptions,
        "sigmoid_bounded": SigmoidBoundedOptions}),
    "likelihood": (LikelihoodConfig, {
        "gaussian_fixed": FixedGaussianLikelihoodConfig,
        "gaussian_shared": LearnedGaussianLikelihoodConfig,
        "gaussian_pixel": LearnedGaussianLikelihoodConfig,
        "discretized_gaussian": DiscretizedLikelihoodConfig,
        "discretized_logistic": DiscretizedLikelihoodConfig}),
    "optim": (OptimConfig, {"adam": AdamConfig, "sgd": SGDConfig}),
}
GROUP_CHOICES: dict[str, tuple[str, ...]] = {
    "dataset": DATASET_NAMES, "model": MODEL_NAMES, "param": tuple(SIGMA_MAPS),
    "likelihood": LIKELIHOOD_NAMES, "optim": OPTIMIZER_NAMES,
}


def choice_schema(group: str, choice: str) -> type:
    base, per_choice = GROUP_SCHEMAS[group]
    return per_choice.get(choice, base)


def register_configs() -> None:
    """The run schema, and `schema/<group>/<choice>` that each configs/<group>/<choice>.yaml
    names in its defaults list."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    for group, choices in GROUP_CHOICES.items():
        for choice in choices:
            store.store(group=f"schema/{group}", name=choice, node=choice_schema(group, choice))


def run_schema(config: DictConfig | dict) -> DictConfig:
    """The structured schema of a saved run config: TrainConfig with each group's node typed by
    the schema of the choice that config names (`resume` merges config.yaml onto it)."""
    schema = OmegaConf.structured(TrainConfig)
    for group in GROUP_SCHEMAS:
        name = OmegaConf.select(OmegaConf.create(config), f"{group}.name") \
            if isinstance(config, dict) else OmegaConf.select(config, f"{group}.name")
        if isinstance(name, str):
            schema[group] = OmegaConf.structured(choice_schema(group, name))
    return schema


# Keys that change how a run talks or fetches its data, not what it computes: a run may continue
# under other values.
_VERBOSITY_KEYS = ("log.quiet", "data.download")


def load_run_config(config_file: Path) -> DictConfig:
    """A run folder's saved config.yaml, as a config of today's schema: keys added since the run
    was saved take their defaults (same_run_config takes them to have these)."""
    saved = OmegaConf.load(config_file)
    return OmegaConf.merge(run_schema(saved), saved)


def same_run_config(saved: DictConfig, current: DictConfig) -> bool:
    """Whether a run folder's saved config and this job's describe the same run. Keys added to
    the schema since the run started take their defaults, so that a sweep cut short continues
    under a newer vae-bench whose new keys default to the old behaviour."""
    return not config_differences(saved, current)


def config_differences(saved: DictConfig, current: DictConfig) -> list[str]:
    """The dotted keys whose values differ between a run folder's saved config and this job's,
    compared as same_run_config describes; ["(a key or value this vae-bench no longer takes)"]
    where the saved config does not fit today's schema."""
    def comparable(config: DictConfig) -> dict:
        merged = OmegaConf.to_container(OmegaConf.merge(run_schema(config), config),
                                        resolve=True)
        for key in _VERBOSITY_KEYS:
            section, name = key.split(".")
            merged[section].pop(name, None)
        # The same folder, however it is written: ../data from one place is /abs/data.
        merged["data"]["root"] = os.path.realpath(os.path.expanduser(merged["data"]["root"]))
        return merged

    try:
        before, now = comparable(saved), comparable(current)
    except Exception:  # a key the schema no longer has, a value it no longer takes: not the same
        return ["(a key or value this vae-bench no longer takes)"]
    return differing_keys(before, now)


def differing_keys(before: dict, now: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(before) | set(now), key=str):
        old, new = before.get(key), now.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            keys += differing_keys(old, new, f"{prefix}{key}.")
        elif old != new:
            keys.append(f"{prefix}{key}")
    return keys


def config_dir() -> Path:
    """The YAML configs: in the package when installed from a wheel, else the repo's configs/."""
    package_dir = Path(__file__).resolve().parent
    installed = package_dir / "configs"
    if (installed / "train.yaml").is_file():
        return installed
    return package_dir.parent / "configs"


def data_root(cfg: DictConfig) -> Path:
    return Path(os.path.expanduser(cfg.data.root))


def pick_device(name: str) -> torch.device:
    """The device `trainer.device` names; ConfigError where this machine has no such device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device={name}: CUDA is not available here (this PyTorch "
                              f"{torch.__version__} finds no GPU) (e.g. `trainer.device=cpu`, or "
                              "`trainer.device=auto`, which picks CUDA when present).")
        count = torch.cuda.device_count()
        index = name.removeprefix("cuda").removeprefix(":")
        if index and int(index) >= count:
            raise ConfigError(f"trainer.device={name}: this machine has {count} CUDA "
                              f"device{'s' if count != 1 else ''}, cuda:0 to cuda:{count - 1} "
                              "(e.g. `trainer.device=cuda:0`).")
    return torch.device(name)
