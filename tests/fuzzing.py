"""Override sets drawn from the schema, and the one property every set must have: either the
config is accepted (and trains), or it is refused as a user error whose message names a key.
Shared by tests/test_fuzz_overrides.py and `scripts/stress.py --fuzz N`."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path

from hypothesis import strategies as st

from vae_bench.cli import USER_ERRORS
from vae_bench.config import GROUP_CHOICES
from vae_bench.preflight import check_command_line, check_runnable, config_groups, schema_keys

# Every fuzzed run starts from these: synthetic data, a few steps, nothing from the network.
BASE = ["dataset=synthetic", "dataset.num_train=64", "dataset.num_test=32", "eval.iwae_k=2",
        "trainer.epochs=1", "trainer.max_steps_per_epoch=3", "trainer.batch_size=16",
        "trainer.threads=1", "log.quiet=true", "log.images=false"]
# Keys whose valid values would make a run slow or reach outside: only bad values are drawn.
ONLY_BAD_VALUES = {"trainer.compile", "data.download", "data.root"}
# Valid values kept small, so that an accepted set trains in seconds.
SMALL_INTS = {"trainer.epochs": (1, 2), "trainer.batch_size": (8, 64), "model.latent_dim": (1, 8),
              "dataset.num_train": (8, 64), "dataset.num_test": (4, 32), "eval.iwae_k": (1, 4),
              "eval.batch_size": (8, 64), "eval.iwae_chunk": (1, 4), "eval.iwae_k_final": (1, 4),
              "dataset.image_size": (4, 16),
              "dataset.channels": (1, 3), "trainer.threads": (1, 2)}
STRING_VALUES = {"trainer.device": ["auto", "cpu", "gpu", "cuda:x", "cuda:99", "cpu0"],
                 "trainer.precision": ["fp32", "bf16", "fp16"],
                 "trainer.on_nonfinite": ["stop", "skip", "ignore"],
                 "model.activation": ["relu", "tanh", "gelu"],
                 "likelihood.param": ["logvar", "softplus_std", "sigmoid_bounded", "log_var"],
                 "optim.schedule": ["none", "burda", "cosine", "step"],
                 "eval.iwae_every": ["0", "1", "-1", "[1]", "[0,1]", "[]", "[2,x]"]}
WRONG_TYPES = ["abc", "1.5", "[1,2]", "true", "null", "", "{a: 1}", "-0"]


@dataclass
class Outcome:
    accepted: bool
    message: str = ""


def misspell(draw, word: str) -> str:
    position = draw(st.integers(0, max(len(word) - 1, 0)))
    edit = draw(st.sampled_from(["drop", "double", "swap"]))
    if edit == "drop" and len(word) > 1:
        return word[:position] + word[position + 1:]
    if edit == "swap" and position + 1 < len(word):
        return word[:position] + word[position + 1] + word[position] + word[position + 2:]
    return word[:position + 1] + word[position:]


def valid_value(draw, key: str, annotation) -> str:
    if key in SMALL_INTS:
        return str(draw(st.integers(*SMALL_INTS[key])))
    if key in STRING_VALUES:
        return draw(st.sampled_from(STRING_VALUES[key]))
    inner = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
    base = inner[0] if inner and typing.get_origin(annotation) is not list else annotation
    if typing.get_origin(base) is list:
        return "[" + ",".join(str(draw(st.integers(-1, 16)))
                              for _ in range(draw(st.integers(0, 3)))) + "]"
    if base is bool:
        return draw(st.sampled_from(["true", "false"]))
    if base is int:
        return str(draw(st.integers(-2, 12)))
    if base is float:
        return repr(draw(st.sampled_from([-1.0, 0.0, 1e-4, 1e-3, 0.1, 0.5, 0.9, 2.0, 5.0])))
    return draw(st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8))


@st.composite
def override(draw) -> str:
    keys = schema_keys()
    kind = draw(st.sampled_from(["value", "value", "value", "wrong type", "unknown key",
                                 "misspelled key", "choice", "misspelled choice"]))
    groups = list(GROUP_CHOICES)
    if kind in ("choice", "misspelled choice"):
        group = draw(st.sampled_from(groups))
        choice = draw(st.sampled_from(config_groups()[group]))
        return f"{group}={misspell(draw, choice) if kind == 'misspelled choice' else choice}"
    key = draw(st.sampled_from(sorted(keys)))
    prefix = draw(st.sampled_from(["", "", "", "+", "++"]))
    if kind == "unknown key":
        key = draw(st.sampled_from(["epochs", "trainer.epoch", "optim.learning_rate", "foo",
                                    "model.depth", "dataset.size", "log.verbose"]))
    elif kind == "misspelled key":
        key = misspell(draw, key)
    if kind == "wrong type" or key in ONLY_BAD_VALUES:
        value = draw(st.sampled_from(WRONG_TYPES))
    elif key in keys:
        value = valid_value(draw, key, keys[key].annotation)
    else:
        value = str(draw(st.integers(0, 5)))
    return f"{prefix}{key}={value}"


override_sets = st.lists(override(), min_size=1, max_size=4)


def names_a_key(message: str, overrides: list[str]) -> bool:
    words = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    words |= set(schema_keys()) | set(config_groups())
    return any(word and word in message for word in words)


def outcome_of(overrides: list[str]) -> Outcome:
    """Accepted, or refused with the message the CLI would print; anything else raises."""
    try:
        cfg = check_command_line([*BASE, *overrides])
        assert cfg is not None
        check_runnable(cfg)
    except USER_ERRORS as error:
        return Outcome(False, str(error))
    return Outcome(True)


def train_accepted(overrides: list[str], run_dir: Path) -> dict:
    from vae_bench.train import train

    cfg = check_command_line([*BASE, *overrides])
    return train(cfg, run_dir, quiet=True)
