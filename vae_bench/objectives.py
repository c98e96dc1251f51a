"""ELBO and importance-weighted bounds as pure functions of tensors.

Densities are diagonal Gaussians summed over the last dimension; everything is in nats.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

LOG_2PI = math.log(2.0 * math.pi)


def reparameterize(mu: Tensor, sigma: Tensor, eps: Tensor) -> Tensor:
    # eps is passed in so that callers control the randomness (and tests can fix it).
    return mu + sigma * eps


def kl_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, σ²) || N(0, 1)) for each latent dimension."""
    # expm1 keeps σ² - 1 - log σ² accurate when σ² ≈ 1, where exp(.) - 1 cancels.
    return 0.5 * (mu.square() + torch.expm1(logvar) - logvar)


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, diag σ²) || N(0, I)), shape (...,) after summing the last dim."""
    return kl_per_dim(mu, logvar).sum(-1)


def log_normal(z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log N(z; μ, diag σ²) summed over the last dim; arguments broadcast."""
    # Written in log σ² so that tiny or huge σ never forms σ² or 1/σ² on its own.
    squared = (z - mu).square() * torch.exp(-logvar)
    return (-0.5 * (LOG_2PI + logvar + squared)).sum(-1)


def log_standard_normal(z: Tensor) -> Tensor:
    return (-0.5 * (LOG_2PI + z.square())).sum(-1)


def log_posterior_at_sample(eps: Tensor, logvar: Tensor) -> Tensor:
    """log q(z|x) for z = μ + σ·ε, from ε itself: −½ Σ (log 2π + log σ² + ε²).

    Recomputing ε as (z − μ)/σ fails where σ underflows (σ = 0 makes z == μ, and 0 · 1/σ² is
    NaN); ε is known exactly, so log q stays finite for any log σ².
    """
    return log_standard_normal(eps) - 0.5 * logvar.sum(-1)


def iwae_log_weights(log_px_z: Tensor, z: Tensor, eps: Tensor, logvar: Tensor) -> Tensor:
    """log p(x|z) + log p(z) − log q(z|x) for samples z = μ + σ·ε, shapes (k, B, L); log σ² (B, L).

    log_px_z has shape (k, B); the result too.
    """
    return log_px_z + log_standard_normal(z) - log_posterior_at_sample(eps, logvar)


def log_mean_exp(x: Tensor, dim: int) -> Tensor:
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


def iwae_nll(sample_log_weights: Callable[[int], Tensor], k: int, chunk: int) -> Tensor:
    """-log p(x) per example, estimated with k importance samples drawn `chunk` at a time.

    sample_log_weights(n) draws n fresh samples and returns their log weights, shape (n, B).
    Chunks are merged with a running logsumexp, so memory stays O(chunk · B) for any k.
    """
    if k < 1 or chunk < 1:
        raise ValueError(f"need k >= 1 and chunk >= 1, got k={k}, chunk={chunk}")
    total: Tensor | None = None
    remaining = k
    while remaining > 0:
        n = min(chunk, remaining)
        log_w = sample_log_weights(n)
        if log_w.shape[0] != n:
            raise ValueError(f"sample_log_weights({n}) returned shape {tuple(log_w.shape)}")
        chunk_lse = torch.logsumexp(log_w, 0)
        total = chunk_lse if total is None else torch.logaddexp(total, chunk_lse)
        remaining -= n
    assert total is not None  # k >= 1 guarantees one chunk
    return math.log(k) - total


# 8-bit pixels are scaled by 1/255, so each intensity level is a bin of width 1/255.
PIXEL_LEVELS = 255


def bits_per_dim(nll_nats: float, dims: int, continuous: bool) -> float:
    """−log₂ P(x) / D for 8-bit images, from −log p(x) in nats per example.

    A discrete likelihood (Bernoulli) gives a probability: divide by D ln 2. A continuous
    density on pixels scaled to [0, 1] is turned into a probability of the 8-bit image by the
    usual discretization correction, density × bin volume: −log P(x) ≈ −log p(x) + D ln 255.
    The result compares with published bits/dim. It is an approximation (the density is read
    at the bin centre, not integrated over the bin), and a density that exceeds 1/bin-width,
    e.g. a per-pixel σₓ collapsing on constant pixels, gives a negative value: a sign of an
    unbounded likelihood, never of a better model."""
    correction = dims * math.log(PIXEL_LEVELS) if continuous else 0.0
    return (nll_nats + correction) / (dims * math.log(2.0))
