"""The config schema (Hydra structured configs) and the range checks that run before training.

Types and key names are enforced by Hydra when the YAML files are merged into `TrainConfig`;
value ranges that a type cannot express are checked by `validate`, which names every bad value.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig

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


@dataclass
class DatasetConfig:
    name: str = MISSING
    binarize: bool = False  # dynamic binarization, resampled every time a batch is drawn
    # Only used by `synthetic`: the images are generated from `seed` and these sizes.
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
    channels: list[int] = field(default_factory=lambda: [32, 64])  # conv only
    # The σ head's raw output s is multiplied by `sigma_head_scale`, and its initial weights by
    # `sigma_head_init_scale`: with these, logstd can be made update-for-update equal to logvar.
    sigma_head_scale: float = 1.0
    sigma_head_init_scale: float = 1.0


@dataclass
class SigmaMapOptions:
    """Options of a σ-map; each map reads only the ones its definition uses."""

    name: str = MISSING
    floor: float = 1e-4
    min_logvar: float = -10.0
    max_logvar: float = 2.0
    sigma_min: float = 1e-3
    sigma_max: float = 2.0


@dataclass
class LikelihoodConfig:
    name: str = MISSING
    sigma: float = 0.1  # σₓ of gaussian_fixed
    # σ-map for the decoder's σₓ output (gaussian_shared, gaussian_pixel), from the same registry.
    param: str = "logvar"
    floor: float = 1e-4
    min_logvar: float = -10.0
    max_logvar: float = 2.0
    sigma_min: float = 1e-3
    sigma_max: float = 2.0


@dataclass
class OptimConfig:
    name: str = MISSING
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    momentum: float = 0.0
    grad_clip: float | None = None  # max global L2 norm; null disables clipping
    sigma_head_lr_mult: float = 1.0  # learning rate of the encoder σ head, relative to lr


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
    on_nonfinite: str = "stop"
    max_skips: int = 10  # with on_nonfinite=skip: stop after this many consecutive skipped steps
    check_every: int = 10  # steps between host reads of the non-finite flag (stop mode)
    max_steps_per_epoch: int | None = None  # cap for quick tries and tests


@dataclass
class EvalConfig:
    batch_size: int = 1000
    iwae_k: int = 1000
    iwae_chunk: int = 100  # importance samples held in memory at once
    iwae_every: int = 0  # epochs between IWAE evaluations; 0 means only at the end
    iwae_max_examples: int | None = None  # evaluate IWAE on the first N test examples only


@dataclass
class DataConfig:
    root: str = "${oc.env:VAE_BENCH_DATA,./data}"
    download: bool = False


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


def register_configs() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


def config_dir() -> Path:
    """The YAML configs: in the package when installed from a wheel, else the repo's configs/."""
    package_dir = Path(__file__).resolve().parent
    installed = package_dir / "configs"
    if (installed / "train.yaml").is_file():
        return installed
    return package_dir.parent / "configs"


def _choice(problems: list[str], key: str, value: str, allowed) -> None:
    if value not in allowed:
        problems.append(f"{key}={value!r} is not one of: {', '.join(allowed)}")


def _positive(problems: list[str], key: str, value, minimum=0, strict=True) -> None:
    bad = value <= minimum if strict else value < minimum
    if bad:
        relation = ">" if strict else ">="
        problems.append(f"{key}={value} must be {relation} {minimum}")


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError listing every out-of-range value; run before any data is loaded."""
    problems: list[str] = []
    _choice(problems, "dataset.name", cfg.dataset.name, DATASET_NAMES)
    _choice(problems, "model.name", cfg.model.name, MODEL_NAMES)
    _choice(problems, "model.activation", cfg.model.activation, ACTIVATIONS)
    _choice(problems, "param.name", cfg.param.name, tuple(SIGMA_MAPS))
    _choice(problems, "likelihood.name", cfg.likelihood.name, LIKELIHOOD_NAMES)
    _choice(problems, "likelihood.param", cfg.likelihood.param, tuple(SIGMA_MAPS))
    _choice(problems, "optim.name", cfg.optim.name, OPTIMIZER_NAMES)
    _choice(problems, "trainer.precision", cfg.trainer.precision, PRECISIONS)
    _choice(problems, "trainer.on_nonfinite", cfg.trainer.on_nonfinite, ON_NONFINITE)
    device = cfg.trainer.device
    if not (device in ("auto", "cpu", "cuda") or device.startswith("cuda:")):
        problems.append(f"trainer.device={device!r} is not one of: auto, cpu, cuda, cuda:N")

    _positive(problems, "optim.lr", cfg.optim.lr)
    _positive(problems, "optim.weight_decay", cfg.optim.weight_decay, strict=False)
    _positive(problems, "optim.eps", cfg.optim.eps)
    _positive(problems, "optim.momentum", cfg.optim.momentum, strict=False)
    _positive(problems, "optim.sigma_head_lr_mult", cfg.optim.sigma_head_lr_mult)
    if len(cfg.optim.betas) != 2 or not all(0 <= b < 1 for b in cfg.optim.betas):
        problems.append(f"optim.betas={list(cfg.optim.betas)} must be two numbers in [0, 1)")
    if cfg.optim.grad_clip is not None:
        _positive(problems, "optim.grad_clip", cfg.optim.grad_clip)

    _positive(problems, "trainer.epochs", cfg.trainer.epochs, 1, strict=False)
    _positive(problems, "trainer.batch_size", cfg.trainer.batch_size, 1, strict=False)
    _positive(problems, "trainer.max_skips", cfg.trainer.max_skips, 1, strict=False)
    _positive(problems, "trainer.check_every", cfg.trainer.check_every, 1, strict=False)
    if cfg.trainer.threads is not None:
        _positive(problems, "trainer.threads", cfg.trainer.threads, 1, strict=False)
    fraction = cfg.trainer.gpu_memory_fraction
    if fraction is not None and not 0 < fraction <= 1:
        problems.append(f"trainer.gpu_memory_fraction={fraction} must be in (0, 1] (the share of "
                        "the GPU's memory one run may use), or null for no cap")
    if cfg.trainer.max_steps_per_epoch is not None:
        _positive(problems, "trainer.max_steps_per_epoch", cfg.trainer.max_steps_per_epoch, 1,
                  strict=False)

    _positive(problems, "model.latent_dim", cfg.model.latent_dim, 1, strict=False)
    for width in cfg.model.hidden:
        _positive(problems, "model.hidden", width, 1, strict=False)
    for width in cfg.model.channels:
        _positive(problems, "model.channels", width, 1, strict=False)
    _positive(problems, "model.sigma_head_scale", cfg.model.sigma_head_scale)
    _positive(problems, "model.sigma_head_init_scale", cfg.model.sigma_head_init_scale)

    for prefix in ("param", "likelihood"):
        options = cfg[prefix]
        _positive(problems, f"{prefix}.floor", options.floor)
        _positive(problems, f"{prefix}.sigma_min", options.sigma_min)
        if options.sigma_min >= options.sigma_max:
            problems.append(f"{prefix}.sigma_min={options.sigma_min} must be < "
                            f"{prefix}.sigma_max={options.sigma_max}")
        if options.min_logvar >= options.max_logvar:
            problems.append(f"{prefix}.min_logvar={options.min_logvar} must be < "
                            f"{prefix}.max_logvar={options.max_logvar}")
    _positive(problems, "likelihood.sigma", cfg.likelihood.sigma)

    _positive(problems, "eval.batch_size", cfg.eval.batch_size, 1, strict=False)
    _positive(problems, "eval.iwae_k", cfg.eval.iwae_k, 1, strict=False)
    _positive(problems, "eval.iwae_chunk", cfg.eval.iwae_chunk, 1, strict=False)
    _positive(problems, "eval.iwae_every", cfg.eval.iwae_every, 0, strict=False)
    if cfg.eval.iwae_max_examples is not None:
        _positive(problems, "eval.iwae_max_examples", cfg.eval.iwae_max_examples, 1, strict=False)

    for key in ("every_steps", "grad_every", "snr_window", "hist_every"):
        _positive(problems, f"log.{key}", cfg.log[key], 1, strict=False)
    if cfg.log.snr_window < 2:
        problems.append(f"log.snr_window={cfg.log.snr_window} must be >= 2 (a std needs two steps)")
    if cfg.log.snr_window > cfg.log.grad_every:
        problems.append(f"log.snr_window={cfg.log.snr_window} must be <= "
                        f"log.grad_every={cfg.log.grad_every}")

    if cfg.dataset.name == "synthetic":
        _positive(problems, "dataset.num_train", cfg.dataset.num_train, 1, strict=False)
        _positive(problems, "dataset.num_test", cfg.dataset.num_test, 1, strict=False)
        _positive(problems, "dataset.channels", cfg.dataset.channels, 1, strict=False)
        if cfg.model.name == "conv" and cfg.dataset.image_size % 4:
            problems.append(f"dataset.image_size={cfg.dataset.image_size} must be a multiple "
                            "of 4 for model=conv (two stride-2 layers)")
        _positive(problems, "dataset.image_size", cfg.dataset.image_size, 4, strict=False)

    if problems:
        raise ConfigError("Invalid configuration: " + "; ".join(problems) + ". Fix the "
                          "override (e.g. `vae-bench train optim.lr=1e-3`); `vae-bench train "
                          "--cfg job` shows the composed config.")


def data_root(cfg: DictConfig) -> Path:
    return Path(os.path.expanduser(cfg.data.root))
