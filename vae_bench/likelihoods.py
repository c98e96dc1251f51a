"""Decoder likelihoods log p(x|z) in nats, summed over pixels to shape (B,).

The decoder emits `mean_out` (B, D), pre-activation, and optionally `s_x`, a raw output for the
pixel noise σₓ (a learned shared scalar or one per pixel) mapped through a registered σ-map.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import ContinuousBernoulli

from vae_bench.objectives import log_normal
from vae_bench.parameterizations import get_sigma_map

LIKELIHOOD_NAMES = (
    "bernoulli",
    "continuous_bernoulli",
    "gaussian_fixed",
    "gaussian_shared",
    "gaussian_pixel",
)

# Densities on [0, 1] pixels rather than probabilities of discrete values; bits/dim applies the
# discretization correction to these (objectives.bits_per_dim).
CONTINUOUS_LIKELIHOODS = ("continuous_bernoulli", "gaussian_fixed", "gaussian_shared",
                          "gaussian_pixel")

_SIGMA_OUTPUTS = {"gaussian_shared": "shared", "gaussian_pixel": "pixel"}


def _check_name(name: str) -> None:
    if name not in LIKELIHOOD_NAMES:
        raise ValueError(f"unknown likelihood {name!r}; allowed: {', '.join(LIKELIHOOD_NAMES)}")


def needs_sigma_output(name: str) -> str | None:
    """What σₓ output the decoder must provide: None, "shared" (one scalar) or "pixel"."""
    _check_name(name)
    return _SIGMA_OUTPUTS.get(name)


def mean_image(name: str, mean_out: Tensor) -> Tensor:
    """E[x|z] in [0, 1], for image grids."""
    _check_name(name)
    if name == "continuous_bernoulli":
        # The CB mean is not sigmoid(logits): the normalizer shifts it towards 0.5.
        return ContinuousBernoulli(logits=mean_out).mean
    return torch.sigmoid(mean_out)


def _gaussian_logvar(name: str, s_x: Tensor | None, opts: Any, like: Tensor) -> Tensor:
    if name == "gaussian_fixed":
        # Filled on the device: new_tensor would be a host-to-device copy on every step.
        return torch.full((), 2.0 * math.log(opts.sigma), device=like.device, dtype=like.dtype)
    if s_x is None:
        raise ValueError(f"likelihood {name!r} needs a sigma output s_x from the decoder")
    # Only σₓ is taken from the map; its `natural` flag concerns the encoder's mean head.
    _, logvar = get_sigma_map(opts.param).sigma_logvar(s_x, opts)
    return logvar


def log_likelihood(name: str, x: Tensor, mean_out: Tensor, s_x: Tensor | None, opts: Any) -> Tensor:
    """log p(x|z) summed over pixels, shape (B,); x is (B, D) in [0, 1]."""
    _check_name(name)
    if name == "bernoulli":
        # Same value as pytorch/examples' BCE(sigmoid(logits)), without saturating the sigmoid.
        return -F.binary_cross_entropy_with_logits(mean_out, x, reduction="none").sum(-1)
    if name == "continuous_bernoulli":
        return ContinuousBernoulli(logits=mean_out).log_prob(x).sum(-1)
    # Pixels live in [0, 1], so the Gaussian mean does too.
    mean = torch.sigmoid(mean_out)
    logvar = _gaussian_logvar(name, s_x, opts, like=mean_out)
    return log_normal(x, mean, logvar)
