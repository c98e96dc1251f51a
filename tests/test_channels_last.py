"""trainer.channels_last: the conv model in NHWC layout. Refused where it cannot apply, kept
through training and checkpoints, resumed bitwise, and close to (not equal to) the default
layout's results, since oneDNN sums in another order."""

from __future__ import annotations

import pytest
import torch
from conftest import TINY, compose_config, run_cli

from vae_bench.config import ConfigError
from vae_bench.train import train
from vae_bench.validation import validate

CONV = [*TINY, "model=conv", "dataset.image_size=8", "dataset.channels=3",
        "likelihood=gaussian_shared", "eval.iwae_k=2", "log.images=false"]


def conv_weights(state: dict) -> dict[str, torch.Tensor]:
    return {name: value for name, value in state.items() if value.dim() == 4}


def test_channels_last_is_refused_for_the_mlp() -> None:
    with pytest.raises(ConfigError, match=r"trainer.channels_last=true applies only to "
                                          r"model=conv .* model=mlp; drop it"):
        validate(compose_config([*TINY, "trainer.channels_last=true"]))
    validate(compose_config([*CONV, "trainer.channels_last=true"]))


@pytest.mark.parametrize("override, words", [
    ("trainer.channels_last=true", ["trainer.channels_last=true", "model=conv"]),
    ("trainer.channels_last=maybe", ["trainer.channels_last", "maybe", "true or false"]),
])
def test_the_command_line_refuses_bad_channels_last_before_training(tmp_path, override,
                                                                    words) -> None:
    process = run_cli(["train", *TINY, override, "hydra.run.dir=run"], cwd=tmp_path)
    assert process.returncode == 2, process.stderr
    for word in words:
        assert word in process.stderr
    assert "Traceback" not in process.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_channels_last_trains_in_nhwc_and_resumes_bitwise(tmp_path) -> None:
    straight = train(compose_config([*CONV, "trainer.channels_last=true"]), tmp_path / "straight",
                     quiet=True)
    first = compose_config([*CONV, "trainer.channels_last=true", "trainer.epochs=1"])
    train(first, tmp_path / "resumed", quiet=True)
    resumed = train(compose_config([*CONV, "trainer.channels_last=true"]), tmp_path / "resumed",
                    resume=True, quiet=True)
    default = train(compose_config(CONV), tmp_path / "default", quiet=True)

    def checkpoint(name: str) -> dict:
        return torch.load(tmp_path / name / "checkpoints" / "last.pt", weights_only=False)

    nhwc, contiguous = checkpoint("straight")["model"], checkpoint("default")["model"]
    assert conv_weights(nhwc)
    for name, weight in conv_weights(nhwc).items():
        assert weight.is_contiguous(memory_format=torch.channels_last), name
        assert not weight.is_contiguous(), name
        assert contiguous[name].is_contiguous(), name
    for name, value in checkpoint("resumed")["model"].items():
        assert torch.equal(value, nhwc[name]), name
    for tag in ("test/elbo", "test/kl", "train/elbo"):
        assert resumed[tag] == straight[tag], tag
    # Another summation order: equal to the default layout's up to rounding, not bitwise.
    assert straight["test/elbo"] == pytest.approx(default["test/elbo"], rel=1e-4)
    for name, value in contiguous.items():
        torch.testing.assert_close(nhwc[name], value, rtol=1e-3, atol=1e-4, msg=name)
