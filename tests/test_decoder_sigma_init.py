"""likelihood.init_sigma: where a learned decoder σₓ starts, for every σ-map and both scales."""

from __future__ import annotations

import pytest
import torch
from conftest import compose_config

from vae_bench.config import ConfigError
from vae_bench.models import VAE
from vae_bench.parameterizations import SIGMA_MAPS, get_sigma_map
from vae_bench.validation import validate

TINY = ["dataset=synthetic", "model.hidden=[16]", "model.latent_dim=3"]
CONV = ["dataset=synthetic", "model=conv", "model.channels=[4,8]", "model.hidden=[16]",
        "model.latent_dim=3", "dataset.channels=3", "dataset.image_size=8"]


def decoder_sigma(cfg, model: VAE) -> torch.Tensor:
    """σₓ for 32 random latents, as the likelihood reads it."""
    s_x = model.decode(torch.randn(32, model.latent_dim)).s_x
    return get_sigma_map(cfg.likelihood.param).sigma_logvar(s_x, cfg.likelihood)[0]


@pytest.mark.parametrize("param", sorted(SIGMA_MAPS))
def test_shared_sigma_x_starts_at_init_sigma(param: str) -> None:
    cfg = compose_config([*TINY, "likelihood=discretized_gaussian", "likelihood.scale=shared",
                          f"likelihood.param={param}", "likelihood.init_sigma=0.25"])
    validate(cfg)
    sigma = decoder_sigma(cfg, VAE(cfg, (1, 8, 8)))
    torch.testing.assert_close(sigma, torch.full_like(sigma, 0.25))


@pytest.mark.parametrize("overrides", [TINY, CONV], ids=["mlp", "conv"])
@pytest.mark.parametrize("param", ["logvar", "softplus_std", "sigmoid_bounded"])
def test_pixel_head_bias_maps_to_init_sigma(overrides: list[str], param: str) -> None:
    cfg = compose_config([*overrides, "likelihood=discretized_gaussian", "likelihood.scale=pixel",
                          f"likelihood.param={param}", "likelihood.init_sigma=0.25"])
    torch.manual_seed(0)
    model = VAE(cfg, (cfg.dataset.channels, cfg.dataset.image_size, cfg.dataset.image_size))
    head = model.decoder_sigma_head
    bias = [m for m in head.modules() if getattr(m, "bias", None) is not None][-1].bias
    sigma_at_bias = get_sigma_map(param).sigma_logvar(bias, cfg.likelihood)[0]
    torch.testing.assert_close(sigma_at_bias, torch.full_like(sigma_at_bias, 0.25))
    # The weights keep their init: σₓ varies around 0.25 from pixel to pixel and latent to latent.
    sigma = decoder_sigma(cfg, model)
    assert sigma.std() > 0
    assert 0.1 < sigma.median() < 0.6


def test_without_init_sigma_the_shared_value_starts_at_raw_zero() -> None:
    cfg = compose_config([*TINY, "likelihood=discretized_gaussian", "likelihood.scale=shared"])
    assert cfg.likelihood.init_sigma is None
    model = VAE(cfg, (1, 8, 8))
    assert model.decoder_sigma_head.item() == 0.0


@pytest.mark.parametrize("overrides, message", [
    (["likelihood=discretized_gaussian", "likelihood.scale=fixed", "likelihood.init_sigma=0.25"],
     r"likelihood.init_sigma=0.25 starts a learned σₓ, but likelihood.scale=fixed"),
    (["likelihood=discretized_gaussian", "likelihood.param=sigmoid_bounded",
      "likelihood.init_sigma=3.0"],
     r"likelihood.init_sigma=3.0 must lie strictly inside the σ range of "
     r"likelihood.param=sigmoid_bounded, \(0.001, 2\)"),
    (["likelihood=gaussian_shared", "likelihood.init_sigma=-1.0"],
     r"likelihood.init_sigma=-1.0 must lie strictly inside"),
])
def test_bad_init_sigma_is_refused(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(compose_config([*TINY, *overrides]))
