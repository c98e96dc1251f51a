"""The config schema (Hydra structured configs) and the range checks that run before training.

Types and key names are enforced by Hydra when the YAML files are merged into `TrainConfig`;
value ranges that a type cannot express are checked by `validate`, which names every bad value.
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
from vae_bench.likelihoods import LIKELIHOOD_NAMES, SCALE_MODES
from vae_bench.parameterizations import SIGMA_MAPS
from vae_bench.schedules import SCHEDULES

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


def same_run_config(saved: DictConfig, current: DictConfig) -> bool:
    """Whether a run folder's saved config and this job's describe the same run. Keys added to
    the schema since the run started take their defaults, so that a sweep cut short continues
    under a newer vae-bench whose new keys default to the old behaviour."""
    def comparable(config: DictConfig) -> dict:
        merged = OmegaConf.to_container(OmegaConf.merge(run_schema(config), config),
                                        resolve=True)
        for key in _VERBOSITY_KEYS:
            section, name = key.split(".")
            merged[section].pop(name, None)
        return merged

    try:
        return comparable(saved) == comparable(current)
    except Exception:  # a key the schema no longer has, a value it no longer takes: not the same
        return False


def config_dir() -> Path:
    """The YAML configs: in the package when installed from a wheel, else the repo's configs/."""
    package_dir = Path(__file__).resolve().parent
    installed = package_dir / "configs"
    if (installed / "train.yaml").is_file():
        return installed
    return package_dir.parent / "configs"


class Problems:
    """Collects what is wrong with a config, each with the value to write instead: the schema's
    default for that key and choice, so the suggested fix is always one that validates."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.defaults = run_schema(cfg)
        self.found: list[str] = []

    def fix(self, key: str) -> str:
        default = OmegaConf.select(self.defaults, key, default=None)
        if isinstance(default, str) and default.startswith("${"):
            return ""
        if OmegaConf.is_list(default):
            default = OmegaConf.to_container(default)
        return f" (e.g. `{key}={format_value(default)}`)"

    def add(self, key: str, message: str, fix: str | None = None) -> None:
        self.found.append(f"{message}{self.fix(key) if fix is None else fix}")

    def choice(self, key: str, value: str, allowed) -> None:
        if value not in allowed:
            self.add(key, f"{key}={value!r} is not one of: {', '.join(allowed)}")

    def at_least(self, key: str, value, minimum, strict: bool = False) -> None:
        if value <= minimum if strict else value < minimum:
            self.add(key, f"{key}={value} must be {'>' if strict else '>='} {minimum}")

    def positive(self, key: str, value) -> None:
        self.at_least(key, value, 0, strict=True)


def format_value(value) -> str:
    """A value as it is written on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(format_value(item) for item in value) + "]"
    return str(value)


def validate(cfg: DictConfig) -> None:
    """Raise ConfigError listing every out-of-range value; run before any data is loaded."""
    problems = Problems(cfg)
    for group, choices in GROUP_CHOICES.items():
        name = cfg[group].name
        problems.choice(f"{group}.name", name, choices)
        if name in choices and OmegaConf.get_type(cfg[group]) is not choice_schema(group, name):
            # `param.name=natural` renames the choice but keeps logvar's options (none).
            problems.add(f"{group}.name", f"{group}.name={name} does not match the {group} "
                         f"chosen", f" (choose it with `{group}={name}`)")
    problems.choice("model.activation", cfg.model.activation, ACTIVATIONS)
    problems.choice("trainer.precision", cfg.trainer.precision, PRECISIONS)
    problems.choice("trainer.on_nonfinite", cfg.trainer.on_nonfinite, ON_NONFINITE)
    device = cfg.trainer.device
    index = device.removeprefix("cuda:")
    if not (device in ("auto", "cpu", "cuda") or (device.startswith("cuda:") and index.isdigit())):
        problems.add("trainer.device", f"trainer.device={device!r} is not one of: auto, cpu, "
                     "cuda, cuda:N (N a GPU index)",
                     " (e.g. `trainer.device=auto`, which picks CUDA when present)")

    optim = cfg.optim
    problems.positive("optim.lr", optim.lr)
    problems.at_least("optim.weight_decay", optim.weight_decay, 0)
    problems.positive("optim.sigma_head_lr_mult", optim.sigma_head_lr_mult)
    problems.choice("optim.schedule", optim.schedule, SCHEDULES)
    if "eps" in optim:
        problems.positive("optim.eps", optim.eps)
    if "momentum" in optim:
        problems.at_least("optim.momentum", optim.momentum, 0)
    if "betas" in optim and (len(optim.betas) != 2 or not all(0 <= b < 1 for b in optim.betas)):
        problems.add("optim.betas", f"optim.betas={format_value(list(optim.betas))} must be two "
                     "numbers in [0, 1)")
    if optim.grad_clip is not None:
        problems.positive("optim.grad_clip", optim.grad_clip)

    trainer = cfg.trainer
    for key in ("epochs", "batch_size", "max_skips", "check_every"):
        problems.at_least(f"trainer.{key}", trainer[key], 1)
    for key in ("threads", "max_steps_per_epoch"):
        if trainer[key] is not None:
            problems.at_least(f"trainer.{key}", trainer[key], 1)
    if trainer.channels_last and cfg.model.name != "conv":
        problems.add("trainer.channels_last", f"trainer.channels_last=true applies only to "
                     f"model=conv (a memory layout for convolutions), and this run has "
                     f"model={cfg.model.name}", "; drop it, or choose `model=conv`")
    fraction = trainer.gpu_memory_fraction
    if fraction is not None and not 0 < fraction <= 1:
        problems.add("trainer.gpu_memory_fraction", f"trainer.gpu_memory_fraction={fraction} "
                     "must be in (0, 1] (the share of the GPU's memory one run may use), or null "
                     "for no cap")

    model = cfg.model
    problems.at_least("model.latent_dim", model.latent_dim, 1)
    hidden = list(model.hidden)
    if not hidden:
        problems.add("model.hidden", "model.hidden=[] must list at least one layer width")
    elif model.name == "conv" and len(hidden) != 1:
        problems.add("model.hidden", f"model.hidden={format_value(hidden)}: model=conv takes "
                     "exactly one width (its dense layer)")
    for width in hidden:
        problems.at_least("model.hidden", width, 1)
    if "channels" in model:
        channels = list(model.channels)
        if len(channels) != 2:
            problems.add("model.channels", f"model.channels={format_value(channels)}: model=conv "
                         "takes exactly two widths (its two conv layers)")
        for width in channels:
            problems.at_least("model.channels", width, 1)
    problems.positive("model.sigma_head_scale", model.sigma_head_scale)
    problems.positive("model.sigma_head_init_scale", model.sigma_head_init_scale)
    if model.init_sigma is not None and cfg.param.name in SIGMA_MAPS:
        lo, hi = SIGMA_MAPS[cfg.param.name].sigma_bounds(cfg.param)
        if not lo < model.init_sigma < hi:
            problems.add("model.init_sigma", f"model.init_sigma={model.init_sigma} must lie "
                         f"strictly inside the σ range of param={cfg.param.name}, "
                         f"({lo:g}, {hi:g})")

    if "param" in cfg.likelihood:
        problems.choice("likelihood.param", cfg.likelihood.param, tuple(SIGMA_MAPS))
    if "sigma" in cfg.likelihood:
        problems.positive("likelihood.sigma", cfg.likelihood.sigma)
    if "scale" in cfg.likelihood:
        problems.choice("likelihood.scale", cfg.likelihood.scale, SCALE_MODES)
    for prefix in ("param", "likelihood"):
        options = cfg[prefix]
        if "floor" in options:
            problems.positive(f"{prefix}.floor", options.floor)
        if "sigma_min" in options:
            problems.positive(f"{prefix}.sigma_min", options.sigma_min)
            if options.sigma_min >= options.sigma_max:
                problems.add(f"{prefix}.sigma_min", f"{prefix}.sigma_min={options.sigma_min} "
                             f"must be < {prefix}.sigma_max={options.sigma_max}")
        if "min_logvar" in options and options.min_logvar >= options.max_logvar:
            problems.add(f"{prefix}.min_logvar", f"{prefix}.min_logvar={options.min_logvar} must "
                         f"be < {prefix}.max_logvar={options.max_logvar}")

    for key in ("batch_size", "iwae_k", "iwae_chunk"):
        problems.at_least(f"eval.{key}", cfg.eval[key], 1)
    check_iwae_every(problems, cfg.eval.iwae_every)
    if cfg.eval.iwae_k_final is not None:
        problems.at_least("eval.iwae_k_final", cfg.eval.iwae_k_final, 1)
    if cfg.eval.iwae_max_examples is not None:
        problems.at_least("eval.iwae_max_examples", cfg.eval.iwae_max_examples, 1)

    for key in ("every_steps", "grad_every", "snr_window", "hist_every"):
        problems.at_least(f"log.{key}", cfg.log[key], 1)
    if cfg.log.snr_window < 2:
        problems.add("log.snr_window", f"log.snr_window={cfg.log.snr_window} must be >= 2 (a std "
                     "needs two steps)")
    if cfg.log.snr_window > cfg.log.grad_every:
        problems.add("log.snr_window", f"log.snr_window={cfg.log.snr_window} must be <= "
                     f"log.grad_every={cfg.log.grad_every}")

    dataset = cfg.dataset
    if "num_train" in dataset:
        for key in ("num_train", "num_test", "channels"):
            problems.at_least(f"dataset.{key}", dataset[key], 1)
        problems.at_least("dataset.image_size", dataset.image_size, 4)
        if model.name == "conv" and dataset.image_size % 4:
            problems.add("dataset.image_size", f"dataset.image_size={dataset.image_size} must be "
                         "a multiple of 4 for model=conv (two stride-2 layers)")

    if problems.found:
        raise ConfigError("Invalid configuration: " + "; ".join(problems.found) + ".")


def check_iwae_every(problems: Problems, every) -> None:
    """A whole number >= 0 (an interval), or a list of epochs >= 1."""
    def whole(value) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if OmegaConf.is_list(every) or isinstance(every, list):
        epochs = list(every)
        if not all(whole(epoch) and epoch >= 1 for epoch in epochs):
            problems.add("eval.iwae_every", f"eval.iwae_every={format_value(epochs)}: the epochs "
                         "listed must be whole numbers >= 1",
                         " (e.g. `eval.iwae_every=[10,30,100,300]`)")
    elif not whole(every) or every < 0:
        problems.add("eval.iwae_every", f"eval.iwae_every={format_value(every)} must be a whole "
                     "number >= 0 (IWAE every N epochs; 0: only at the end) or a list of epochs",
                     " (e.g. `eval.iwae_every=10` or `eval.iwae_every=[10,30,100,300]`)")


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
