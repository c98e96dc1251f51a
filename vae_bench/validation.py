"""The range checks that run before training: every value a type cannot constrain.

`validate` names each bad value with one that would validate (the schema's default for it).
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from vae_bench.config import (
    ACTIVATIONS,
    GROUP_CHOICES,
    ON_NONFINITE,
    PRECISIONS,
    ConfigError,
    choice_schema,
    run_schema,
)
from vae_bench.likelihoods import SCALE_MODES
from vae_bench.parameterizations import SIGMA_MAPS
from vae_bench.schedules import SCHEDULES


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
        check_inside_sigma_range(problems, "model.init_sigma", model.init_sigma, "param",
                                 cfg.param.name, cfg.param)

    if "param" in cfg.likelihood:
        problems.choice("likelihood.param", cfg.likelihood.param, tuple(SIGMA_MAPS))
    if "sigma" in cfg.likelihood:
        problems.positive("likelihood.sigma", cfg.likelihood.sigma)
    if "scale" in cfg.likelihood:
        problems.choice("likelihood.scale", cfg.likelihood.scale, SCALE_MODES)
    check_init_sigma_x(problems, cfg.likelihood)
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


def check_init_sigma_x(problems: Problems, likelihood: DictConfig) -> None:
    """likelihood.init_sigma: only where σₓ is learned, and inside the σ range of its map."""
    init = likelihood.get("init_sigma")
    if init is None:
        return
    if likelihood.get("scale") == "fixed":
        problems.add("likelihood.init_sigma", f"likelihood.init_sigma={init} starts a learned "
                     "σₓ, but likelihood.scale=fixed learns none (its σₓ is likelihood.sigma)",
                     " (e.g. `likelihood.init_sigma=null`)")
        return
    if likelihood.param in SIGMA_MAPS:  # an unknown map is reported above
        check_inside_sigma_range(problems, "likelihood.init_sigma", init, "likelihood.param",
                                 likelihood.param, likelihood)


def check_inside_sigma_range(problems: Problems, key: str, sigma: float, map_key: str,
                             map_name: str, options: DictConfig) -> None:
    """A starting σ must be one the map can output: strictly inside its bounds."""
    lo, hi = SIGMA_MAPS[map_name].sigma_bounds(options)
    if not lo < sigma < hi:
        problems.add(key, f"{key}={sigma} must lie strictly inside the σ range of "
                     f"{map_key}={map_name}, ({lo:g}, {hi:g})")
