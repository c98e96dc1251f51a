"""Decoder likelihoods log p(x|z) in nats, summed over pixels to shape (B,).

The decoder emits `mean_out` (B, D), pre-activation, and optionally `s_x`, a raw output for the
pixel noise σₓ (a learned shared scalar or one per pixel) mapped through a registered σ-map.

The discretized likelihoods give each 8-bit pixel value the probability of its bin (so their
ELBO bounds log P(x) of the 8-bit data); their σₓ comes per pixel, shared or fixed, chosen by
`likelihood.scale`. For the logistic, the σ-map's σ is the logistic's scale s (std s·π/√3).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import ContinuousBernoulli

from vae_bench.discretized import discretized_gaussian_log_prob, discretized_logistic_log_prob
from vae_bench.objectives import log_normal
from vae_bench.parameterizations import get_sigma_map

LIKELIHOOD_NAMES = (
    "bernoulli",
    "continuous_bernoulli",
    "gaussian_fixed",
    "gaussian_shared",
    "gaussian_pixel",
    "discretized_gaussian",
    "discretized_logistic",
)

# Densities on [0, 1] pixels rather than probabilities of discrete values; bits/dim applies the
# discretization correction to these (objectives.bits_per_dim).
CONTINUOUS_LIKELIHOODS = ("continuous_bernoulli", "gaussian_fixed", "gaussian_shared",
                          "gaussian_pixel")

_SIGMA_OUTPUTS = {"gaussian_shared": "shared", "gaussian_pixel": "pixel"}

DISCRETIZED_LIKELIHOODS = {
    "discretized_gaussian": discretized_gaussian_log_prob,
    "discretized_logistic": discretized_logistic_log_prob,
}
# How a discretized likelihood gets its σₓ: a decoder head per pixel, one learned scalar, or
# likelihood.sigma.
SCALE_MODES = ("pixel", "shared", "fixed")


def _check_name(name: str) -> None:
    if name not in LIKELIHOOD_NAMES:
        raise ValueError(f"unknown likelihood {name!r}; allowed: {', '.join(LIKELIHOOD_NAMES)}")


def needs_sigma_output(name: str, opts: Any) -> str | None:
    """What σₓ output the decoder must provide: None, "shared" (one scalar) or "pixel"."""
    _check_name(name)
    if name in DISCRETIZED_LIKELIHOODS:
        if opts.scale not in SCALE_MODES:
            raise ValueError(f"likelihood.scale={opts.scale!r} is not one of: "
                             f"{', '.join(SCALE_MODES)}")
        return None if opts.scale == "fixed" else opts.scale
    return _SIGMA_OUTPUTS.get(name)


def mean_image(name: str, mean_out: Tensor) -> Tensor:
    """E[x|z] in [0, 1], for image grids."""
    _check_name(name)
    if name == "continuous_bernoulli":
        # The CB mean is not sigmoid(logits): the normalizer shifts it towards 0.5.
        return ContinuousBernoulli(logits=mean_out).mean
    return torch.sigmoid(mean_out)


def _gaussian_logvar(name: str, s_x: Tensor | None, opts: Any, like: Tensor) -> Tensor:
    if name == "gaussian_fixed" or needs_sigma_output(name, opts) is None:
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
    # Pixels live in [0, 1], so the Gaussian (or logistic) location does too.
    mean = torch.sigmoid(mean_out)
    logvar = _gaussian_logvar(name, s_x, opts, like=mean_out)
    if name in DISCRETIZED_LIKELIHOODS:
        return DISCRETIZED_LIKELIHOODS[name](x, mean, 0.5 * logvar).sum(-1)
    return log_normal(x, mean, logvar)
