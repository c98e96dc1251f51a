"""Common random numbers: the report pairs runs by seed, which is valid only when runs of one
seed share initialization, data order and ε whatever their σ-map. Also `model.init_sigma`,
which starts every map at the same σ, and the bits/dim the runs log."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config

import vae_bench.data
import vae_bench.estimators
import vae_bench.train
from vae_bench.objectives import bits_per_dim
from vae_bench.parameterizations import SIGMA_MAPS
from vae_bench.train import train

# Two epochs of 8 steps each, with sampled test evaluation and IWAE: every source of randomness
# the loop has (init, shuffling, dynamic binarization, ε in training, evaluation and IWAE).
CRN_OVERRIDES = [*TINY, "dataset.num_train=256", "trainer.batch_size=32",
                 "dataset.binarize=true", "log.diagnostics=true"]


# The unpatched functions, taken once: a nested patch must wrap these, not another recorder.
real_vae = vae_bench.train.VAE
real_to_float = vae_bench.data.to_float
real_reparameterize = vae_bench.estimators.reparameterize


def record_random_inputs(name: str, tmp_path: Path, monkeypatch, extra=()) -> dict:
    """The initial parameters, every input batch and every ε of one tiny run of σ-map `name`."""
    record = {"batches": [], "eps": []}

    def vae(*args, **kwargs):
        model = real_vae(*args, **kwargs)
        record["init"] = {k: v.clone() for k, v in model.state_dict().items()}
        return model

    def to_float(*args, **kwargs):
        x = real_to_float(*args, **kwargs)
        record["batches"].append(x.clone())
        return x

    def reparameterize(mu, sigma, eps):
        record["eps"].append(eps.clone())
        return real_reparameterize(mu, sigma, eps)

    monkeypatch.setattr(vae_bench.train, "VAE", vae)
    monkeypatch.setattr(vae_bench.train, "to_float", to_float)
    monkeypatch.setattr(vae_bench.estimators, "to_float", to_float)
    monkeypatch.setattr(vae_bench.estimators, "reparameterize", reparameterize)
    cfg = compose_config([*CRN_OVERRIDES, f"param={name}", *extra])
    summary = train(cfg, tmp_path / name, quiet=True)
    assert summary["status"] == "completed", summary
    return record


# The CIFAR studies' setting too: the conv model and a discretized Gaussian with one shared σₓ
# started at 0.25 (experiment=cifar_encoder), whose runs the report also pairs by seed.
SETTINGS = {"mlp": [], "conv_discretized_shared": [
    "model=conv", "likelihood=discretized_gaussian", "likelihood.scale=shared",
    "likelihood.init_sigma=0.25"]}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_every_sigma_map_sees_the_same_init_data_order_and_eps(setting, tmp_path,
                                                               monkeypatch) -> None:
    extra = SETTINGS[setting]
    reference = record_random_inputs("logvar", tmp_path, monkeypatch, extra)
    # 16 training steps, then test evaluation and IWAE after each epoch.
    assert len(reference["eps"]) > 16 and len(reference["batches"]) > 16
    for name in sorted(set(SIGMA_MAPS) - {"logvar"}):
        with monkeypatch.context() as patch:
            other = record_random_inputs(name, tmp_path, patch, extra)
        # Same architecture for every map, drawn from the same seed: bitwise the same weights.
        assert other["init"].keys() == reference["init"].keys()
        for key, value in reference["init"].items():
            assert torch.equal(other["init"][key], value), (name, key)
        assert len(other["batches"]) == len(reference["batches"]), name
        for ours, theirs in zip(other["batches"], reference["batches"]):
            assert torch.equal(ours, theirs), name  # order and binarization
        assert len(other["eps"]) == len(reference["eps"]), name
        for ours, theirs in zip(other["eps"], reference["eps"]):
            assert torch.equal(ours, theirs), name


def test_another_seed_changes_all_three(tmp_path, monkeypatch) -> None:
    """The check above could pass vacuously if nothing depended on the seed."""
    seed0 = record_random_inputs("logvar", tmp_path / "0", monkeypatch)
    with monkeypatch.context() as patch:
        seed1 = record_random_inputs("logvar", tmp_path / "1", patch, extra=["seed=1"])
    assert not torch.equal(seed0["init"]["encoder_mu_head.weight"],
                           seed1["init"]["encoder_mu_head.weight"])
    assert not torch.equal(seed0["batches"][0], seed1["batches"][0])
    assert not torch.equal(seed0["eps"][0], seed1["eps"][0])


@pytest.mark.parametrize("name", sorted(SIGMA_MAPS))
def test_init_sigma_starts_every_input_at_that_sigma(name: str) -> None:
    from vae_bench.models import VAE

    cfg = compose_config([*TINY, f"param={name}", "model.init_sigma=0.9"])
    torch.manual_seed(0)
    model = VAE(cfg, (1, 28, 28))
    posterior = model.encode(torch.rand(16, 1, 28, 28))
    torch.testing.assert_close(posterior.sigma, torch.full_like(posterior.sigma, 0.9))
    # The μ head is untouched, so at σ = 1 even natural's μ = η₁σ² equals the other maps' μ.
    x = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    means = []
    for param in (name, "logvar"):
        torch.manual_seed(0)
        model = VAE(compose_config([*TINY, f"param={param}", "model.init_sigma=1.0"]), (1, 28, 28))
        means.append(model.encode(x).mu)
    torch.testing.assert_close(means[0], means[1])


def test_init_sigma_outside_the_maps_range_is_refused() -> None:
    from vae_bench.config import ConfigError
    from vae_bench.validation import validate

    with pytest.raises(ConfigError, match=r"model.init_sigma=5.0 .*param=sigmoid_bounded"):
        validate(compose_config([*TINY, "param=sigmoid_bounded", "model.init_sigma=5.0"]))


def test_bits_per_dim() -> None:
    dims = 784
    # A Bernoulli probability: nats → bits, per dimension, nothing added.
    assert bits_per_dim(dims * math.log(2.0), dims, continuous=False) == pytest.approx(1.0)
    # A density on [0, 1]: a uniform density (−log p = 0) is 8-bit noise, log₂ 255 bits/dim.
    assert bits_per_dim(0.0, dims, continuous=True) == pytest.approx(math.log2(255))
    # A density above 1/bin-width gives a negative value: the unbounded-likelihood signature.
    assert bits_per_dim(-dims * 6.0, dims, continuous=True) < 0


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian_shared", "discretized_logistic"])
def test_runs_log_bits_per_dim_of_their_test_elbo_and_iwae(likelihood, tmp_path) -> None:
    summary = train(compose_config([*TINY, f"likelihood={likelihood}"]), tmp_path, quiet=True)
    dims = 28 * 28
    continuous = likelihood == "gaussian_shared"
    if not continuous:
        # A probability of the 8-bit image: nats → bits per dimension, no correction added.
        assert summary["test/bpd"] == pytest.approx(-summary["test/elbo"] / (dims * math.log(2)))
    assert summary["test/bpd"] == pytest.approx(
        bits_per_dim(-summary["test/elbo"], dims, continuous))
    assert summary["test/bpd_iwae"] == pytest.approx(
        bits_per_dim(summary["test/nll_iwae"], dims, continuous))
    assert summary["test/bpd_iwae"] <= summary["test/bpd"] + 1e-6  # IWAE is the tighter bound
