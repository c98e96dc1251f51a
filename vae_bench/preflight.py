"""Checks a `vae-bench train` command line before Hydra runs it.

Hydra reports its own errors (a malformed override, a value of the wrong type, a group choice
that does not exist) with exit code 1 and a message about Hydra rather than about the key, and it
accepts `+trainer.epoch=3` silently, since `+` appends to any config node. Here every override is
checked against the schema first (vae_bench/config.py): each mistake becomes a ConfigError that
names the key, the value, what is allowed and a fix for that key; the CLI prints it and exits 2.
For a single run, range, device and data are checked too, before Hydra creates the run folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, OverrideType
from hydra.errors import HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vae_bench.config import (
    GROUP_CHOICES,
    GROUP_SCHEMAS,
    ConfigError,
    TrainConfig,
    choice_schema,
    config_dir,
    data_root,
)
from vae_bench.validation import format_value, validate

# Hydra flags after which no config is composed for training: help, completion, other configs.
NOTHING_TO_CHECK = ("help", "hydra_help", "info", "shell_completion", "config_path",
                    "config_name", "config_dir", "experimental_rerun")
# Words users reach for that the schema spells otherwise; difflib cannot see these.
SYNONYMS = {"learning_rate": "lr", "epoch": "epochs", "batchsize": "batch_size",
            "latent": "latent_dim", "bs": "batch_size"}
SHOW_KEYS = "`vae-bench train --cfg job` lists every key"


@dataclass(frozen=True)
class SchemaKey:
    """One leaf of the run schema, e.g. `dataset.num_train`."""

    key: str
    schema: type  # the dataclass holding it: for a group key, the schema of one choice
    field_key: str  # the key inside `schema`
    annotation: Any
    group: str | None = None  # dataset, model, ... for keys inside a group's node
    choices: tuple[str, ...] = ()  # the group's choices that have this key

    def applies_to(self, choice: str) -> bool:
        return self.group is None or choice in self.choices

    @property
    def only_some_choices(self) -> bool:
        return self.group is not None and set(self.choices) != set(GROUP_CHOICES[self.group])

    def default(self) -> Any:
        value = OmegaConf.select(OmegaConf.structured(self.schema), self.field_key)
        return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


def _leaves(schema: type, prefix: str = "") -> Iterator[tuple[str, Any]]:
    hints = typing.get_type_hints(schema)
    for field in dataclasses.fields(schema):
        annotation = hints[field.name]
        if dataclasses.is_dataclass(annotation):
            yield from _leaves(annotation, f"{prefix}{field.name}.")
        else:
            yield f"{prefix}{field.name}", annotation


@functools.cache
def schema_keys() -> dict[str, SchemaKey]:
    """Every key a run config can hold, over all choices of every group."""
    keys: dict[str, SchemaKey] = {}
    for group, choices in GROUP_CHOICES.items():
        for choice in choices:
            schema = choice_schema(group, choice)
            for field_key, annotation in _leaves(schema):
                key = f"{group}.{field_key}"
                known = keys.get(key)
                having = (*known.choices, choice) if known else (choice,)
                keys[key] = SchemaKey(key, known.schema if known else schema, field_key,
                                      annotation, group, having)
    for key, annotation in _leaves(TrainConfig):
        if key.split(".")[0] not in GROUP_SCHEMAS:
            keys[key] = SchemaKey(key, TrainConfig, key, annotation)
    return keys


@functools.cache
def config_groups() -> dict[str, tuple[str, ...]]:
    """Group -> its choices, as Hydra finds them: the YAML files under configs/<group>/."""
    return {folder.name: tuple(sorted(path.stem for path in folder.glob("*.yaml")))
            for folder in sorted(config_dir().iterdir())
            if folder.is_dir() and folder.name != "hydra" and any(folder.glob("*.yaml"))}


# ---- messages ---------------------------------------------------------------------------------


TYPE_WORDS = {int: "whole number", float: "number", bool: "boolean (true or false)",
              str: "string"}


def describe(annotation: Any) -> str:
    """What a value of this type looks like on the command line."""
    args = typing.get_args(annotation)
    if type(None) in args:
        inner = next(arg for arg in args if arg is not type(None))
        return f"{describe(inner)}, or null"
    if typing.get_origin(annotation) is list:
        return f"a list of {TYPE_WORDS[args[0]]}s"
    return f"a {TYPE_WORDS[annotation]}"


def example(key: SchemaKey, value: Any = None) -> str:
    return f"`{key.key}={format_value(key.default() if value is None else value)}`"


def suggest_key(key: str) -> str | None:
    """The schema key closest to a mistyped one: same leaf elsewhere, a synonym, or difflib."""
    keys = schema_keys()
    parent, _, leaf = key.rpartition(".")
    leaf = SYNONYMS.get(leaf, leaf)
    spelled = f"{parent}.{leaf}" if parent else leaf
    if spelled in keys:
        return spelled
    same_leaf = [k for k in keys if k.rpartition(".")[2] == leaf]
    if len(same_leaf) == 1:
        return same_leaf[0]
    close = difflib.get_close_matches(spelled, list(keys), n=1, cutoff=0.75)
    if close:
        return close[0]
    siblings = [k for k in keys if k.rpartition(".")[0] == parent]
    close = difflib.get_close_matches(spelled, siblings, n=1, cutoff=0.5)
    return close[0] if close else None


def unknown_key(override: Override, key: str) -> ConfigError:
    raw = override.get_value_element_as_str()
    keys = schema_keys()
    suggestion = suggest_key(key)
    inner = sorted({k[len(key) + 1:] for k in keys if k.startswith(f"{key}.")})
    if inner:
        return ConfigError(f"{override.input_line}: `{key}` is a section, not a value; set one "
                           f"of its keys, e.g. `{key}.{inner[0]}=…`: {', '.join(inner)}.")
    if suggestion:
        hint = f"did you mean `{suggestion}`? (e.g. `{suggestion}={raw}`)"
    else:
        parent = key.rpartition(".")[0]
        siblings = sorted(k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == parent)
        hint = (f"the keys of `{parent}` are {', '.join(siblings)}" if siblings
                else SHOW_KEYS)
    return ConfigError(f"{override.input_line}: there is no key `{key}`; {hint}.")


def unknown_choice(group: str, value: str) -> ConfigError:
    choices = config_groups()[group]
    close = difflib.get_close_matches(value, choices, n=1, cutoff=0.6)
    hint = f"did you mean `{group}={close[0]}`? " if close else ""
    return ConfigError(f"{group}={value}: `{group}` has no choice `{value}`; {hint}"
                       f"choose one of: {', '.join(choices)}.")


def not_for_this_choice(override: Override, key: SchemaKey, chosen: str) -> ConfigError:
    having = ", ".join(f"{key.group}={choice}" for choice in key.choices)
    return ConfigError(f"{override.input_line}: `{key.key}` applies only to {having}, and this "
                       f"run has {key.group}={chosen}; drop it, or choose "
                       f"`{key.group}={key.choices[0]}`.")


# ---- the checks -------------------------------------------------------------------------------


def parse(overrides: list[str]) -> list[Override]:
    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.extend(parser.parse_overrides([text]))
        except HydraException as error:
            key = text.split("=", 1)[0].lstrip("+~")
            known = schema_keys().get(key)
            fix = f"e.g. {example(known)}" if known else "e.g. `optim.lr=0.001`"
            lines = str(error).splitlines()
            # ANTLR's reason, without the list of every token it would have taken instead
            reason = lines[1].split(" expecting ")[0].strip() if len(lines) > 1 else "unreadable"
            raise ConfigError(f"`{text}` is not an override Hydra can read ({reason}); "
                              f"write key=value, {fix}.") from None
    return parsed


def values_of(override: Override) -> list[Any]:
    if override.is_discrete_sweep():
        return list(override.sweep_iterator())
    if override.is_sweep_override():  # an interval: its bounds are numbers by the grammar
        return []
    return [override.value()]


def is_hydra(override: Override) -> bool:
    return override.is_hydra_override() or "/" in override.key_or_group


def check_group(override: Override) -> None:
    if override.type == OverrideType.DEL:
        return
    group = override.key_or_group
    for value in values_of(override):
        if value is not None and value not in config_groups()[group]:
            raise unknown_choice(group, str(value))


def check_value(override: Override) -> None:
    """The key exists in some choice's schema and every value has its type."""
    key = override.key_or_group
    schema_key = schema_keys().get(key)
    if schema_key is None:
        raise unknown_key(override, key)
    if override.type == OverrideType.DEL:
        raise ConfigError(f"{override.input_line}: schema keys cannot be deleted; set a value "
                          f"instead, e.g. {example(schema_key)}.")
    for value in values_of(override):
        node = OmegaConf.structured(schema_key.schema)
        try:
            OmegaConf.update(node, schema_key.field_key, value, merge=True)
        except OmegaConfBaseException:
            shown = format_value(value) if override.is_sweep_override() \
                else override.get_value_element_as_str()
            raise ConfigError(f"{key}={shown}: `{key}` must be "
                              f"{describe(schema_key.annotation)} (e.g. "
                              f"{example(schema_key)}).") from None


def check_applies(overrides: Iterable[Override], choices: dict[str, str]) -> None:
    """Each key set is one the chosen group choices have (`dataset.num_train` needs synthetic);
    `+` only for keys the config does not hold already."""
    for override in overrides:
        key = schema_keys()[override.key_or_group]
        if key.group and not key.applies_to(choices[key.group]):
            raise not_for_this_choice(override, key, choices[key.group])
        if override.type == OverrideType.ADD:
            raise ConfigError(f"{override.input_line}: `{key.key}` is in the config already; "
                              f"set it without `+`: `{override.input_line[1:]}`.")


def compose(overrides: list[str], mode: RunMode) -> DictConfig:
    """Hydra's composition, its errors as ConfigErrors naming the key where Hydra names one."""
    try:
        return GlobalHydra.instance().hydra.compose_config(
            config_name="train", overrides=overrides, run_mode=mode, from_shell=True,
            with_log_configuration=False)
    except (HydraException, OmegaConfBaseException) as error:
        cause = error.__cause__ or error
        key = getattr(cause, "full_key", None)
        first_line = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
        known = schema_keys().get(key or "")
        fix = f" (e.g. {example(known)})" if known else f"; {SHOW_KEYS}"
        raise ConfigError(f"{key + ': ' if key else ''}{first_line}{fix}.") from None


def jobs_of(overrides: list[Override], sweeper_params: dict) -> list[list[Override]]:
    """The override list of every job of a sweep, as Hydra's basic sweeper expands it."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    preset = parse([f"{key}={value}" for key, value in sweeper_params.items()])
    batches = BasicSweeper.split_arguments([*preset, *overrides], max_batch_size=None)
    return [parse(job) for batch in batches for job in batch]


def check_command_line(argv: list[str]) -> DictConfig | None:
    """Raise ConfigError for the first mistake on a `vae-bench train` command line. Returns the
    composed config of a single run (None for a sweep, or where Hydra composes nothing)."""
    from hydra._internal.utils import get_args_parser

    args = get_args_parser().parse_args(argv)
    modes = [flag for flag, given in (("--multirun", args.multirun), ("--cfg", args.cfg),
                                      ("--info", args.info),
                                      ("--shell-completion", args.shell_completion)) if given]
    if len(modes) > 1:
        raise ConfigError(f"{' and '.join(modes)} cannot go together: pick one (e.g. "
                          "`vae-bench train --cfg job a=b` shows one run's config; a sweep's "
                          "jobs each have theirs in <run folder>/config.yaml)")
    if any(getattr(args, flag) for flag in NOTHING_TO_CHECK):
        return None
    overrides = parse(args.overrides)
    groups = config_groups()
    for override in overrides:
        if is_hydra(override):
            continue
        if override.key_or_group in groups:
            check_group(override)
        else:
            check_value(override)

    if not args.multirun:
        sweeps = [o.input_line for o in overrides if o.is_sweep_override()]
        if sweeps:
            raise ConfigError(f"{sweeps[0]} lists several values, which makes a sweep: add `-m` "
                              "to run one job per value, or give one value.")

    mode = RunMode.MULTIRUN if args.multirun else RunMode.RUN
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        # Which choices each job makes comes first: a key that the chosen dataset (or σ-map, …)
        # lacks would otherwise end the composition below with Hydra's words.
        choosing = [o for o in overrides if is_hydra(o) or o.key_or_group in groups]
        jobs = [overrides]
        if args.multirun:
            chosen = compose([o.input_line for o in choosing], mode)
            params = chosen.hydra.sweeper.params
            params = OmegaConf.to_container(params) if params else {}
            jobs = jobs_of(overrides, params)
        seen = set()
        for job in jobs:
            job_choosing = [o for o in job if is_hydra(o) or o.key_or_group in groups]
            lines = tuple(o.input_line for o in job_choosing)
            if lines in seen:
                continue
            seen.add(lines)
            choices = compose(list(lines), RunMode.RUN).hydra.runtime.choices
            check_applies([o for o in job if o not in job_choosing], dict(choices))
        composed = compose(list(args.overrides), mode)
    if args.multirun and not args.cfg:
        from vae_bench.slurm import check_launcher

        check_launcher(composed)  # a cluster sweep's resources, before sbatch sees them
    if args.multirun or args.cfg:
        return None
    return composed


def check_runnable(cfg: DictConfig) -> None:
    """Range, device and data: what a valid config may still lack on this machine."""
    from vae_bench.config import pick_device
    from vae_bench.data import ensure_files

    validate(cfg)
    pick_device(cfg.trainer.device)
    ensure_files(cfg.dataset.name, data_root(cfg), cfg.data.download)
