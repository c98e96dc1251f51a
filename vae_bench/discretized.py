"""Probabilities of 8-bit pixel values under a Gaussian or a logistic, in log space.

A pixel x ∈ {0, 1/255, …, 1} gets the mass of its bin [x − h, x + h], h = 1/510, under the
continuous distribution; the two end bins reach to −∞ and +∞ (PixelCNN++, IAF), so the 256
masses sum to 1 for any location and scale. Everything is a log probability, stable for scales
from 1e-6 to 1e3 and for locations far outside [0, 1], with finite gradients throughout.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

PIXEL_LEVELS = 255  # 8-bit pixels scaled by 1/255: 256 values, bins of width 1/255
HALF_BIN = 0.5 / PIXEL_LEVELS
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)
_TAIL = 10.0  # standard units beyond which the Gaussian CDF comes from its tail series
_SQRT_HALF = math.sqrt(0.5)

# Standardized edges are clamped here: beyond, the mass is 0 to any precision, and the clamp
# keeps c² (and a sum of 3,072 such log masses) finite in float32.
_EDGE_LIMIT = 1e15
# Below this bin width t = w·max(|c|, 1) in standard units, the Gaussian bin mass is taken from
# the density at the bin's centre (with its w² correction) instead of a difference of two CDFs:
# the difference loses digits as t → 0 (its relative error grows like eps/t), the centre rule's
# error shrinks like t⁴/1000, and the two meet near these widths for each precision.
_CENTRE_RULE_BELOW = {torch.float64: 3e-3, torch.float32: 0.2}


def _log1mexp(d: Tensor) -> Tensor:
    """log(1 − e^d) for d < 0, accurate on both sides of d = −log 2 (Mächler 2012)."""
    near_zero = d > -math.log(2.0)
    # torch.where backpropagates through both branches: each gets an input it is finite at.
    harmless = torch.full_like(d, -1.0)
    near = torch.log(-torch.expm1(torch.where(near_zero, d, harmless)))
    far = torch.log1p(-torch.exp(torch.where(near_zero, harmless, d)))
    return torch.where(near_zero, near, far)


def _edges(x: Tensor, loc: Tensor, log_scale: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The bin's edges in standard units, (x ∓ h − loc)/scale, ∓_EDGE_LIMIT (as good as ∓∞) for
    the open sides of the two end bins, and the bin's width in standard units: 2h/scale, not
    upper − lower, which cancels once the edges are far from the location."""
    inv_scale = torch.exp(-log_scale)
    centre = (x - loc) * inv_scale
    half_width = HALF_BIN * inv_scale
    # Pixels are k/255 in floating point: compare with half a bin, never with 0.0 or 1.0 exactly.
    first_bin, last_bin = x < HALF_BIN, x > 1.0 - HALF_BIN
    lower = torch.where(first_bin, -_EDGE_LIMIT, centre - half_width)
    upper = torch.where(last_bin, _EDGE_LIMIT, centre + half_width)
    width = torch.where(first_bin | last_bin, _EDGE_LIMIT, 2.0 * half_width)
    return lower.clamp(-_EDGE_LIMIT, _EDGE_LIMIT), upper.clamp(-_EDGE_LIMIT, _EDGE_LIMIT), width


def _log_ndtr_left_tail(x: Tensor) -> Tensor:
    """log Φ(x) for x ≤ −10 from its asymptotic series, −x²/2 − log(−x√(2π)) + log(1 − 1/x² +
    3/x⁴ − …): nine terms are exact to 1e-10 there, and vectorize, unlike erfcx or log_ndtr
    (whose float32 gradient is also wrong in this tail: 955 instead of 1000 at x = −1000)."""
    inv_square = 1.0 / x.square()
    series = torch.ones_like(x)
    for n in range(8, 0, -1):  # Horner: 1 − 1·u(1 − 3·u(1 − 5·u(…))), u = 1/x²
        series = 1.0 - (2 * n - 1) * inv_square * series
    return -0.5 * x.square() - torch.log(-x) - _LOG_SQRT_2PI + torch.log(series)


def discretized_gaussian_log_prob(x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) of each 8-bit pixel value x under N(loc, scale²) discretized; broadcasts."""
    lower, upper, width = _edges(x, loc, log_scale)
    # log(Φ(upper) − Φ(lower)) from the side where the bin lies in the left tail: mirror bins
    # whose centre is above 0, since Φ(u) − Φ(l) = Φ(−l) − Φ(−u), and 1 − Φ would cancel.
    mirrored = lower + upper > 0
    low = torch.where(mirrored, -upper, lower)
    high = torch.where(mirrored, -lower, upper)

    # torch.where backpropagates through both branches: each gets inputs it is finite at.
    # Bins within 10 standard units: the mass itself, erfc being exact in relative terms there.
    high_near = high.clamp(min=-_TAIL)
    mass = 0.5 * (torch.erfc(-high_near * _SQRT_HALF) - torch.erfc(-low * _SQRT_HALF))
    near = torch.log(mass.clamp(min=torch.finfo(mass.dtype).tiny))
    # Narrow bins: log(w·φ(c)) + w²(c² − 1)/24, the centre rule with its leading correction,
    # where a difference of two CDFs would cancel.
    centre = 0.5 * (lower + upper)
    centre_rule = (torch.log(width) - _LOG_SQRT_2PI - 0.5 * centre.square()
                   + width.square() * (centre.square() - 1.0) / 24.0)
    narrow = width * centre.abs().clamp(min=1.0) < _CENTRE_RULE_BELOW.get(centre.dtype, 0.2)
    log_mass = torch.where(narrow, centre_rule, near)
    far = (high < -_TAIL) & ~narrow
    # Training rarely puts a pixel 10 σₓ from its mean, and the tail series is half this
    # function's work: on the CPU, where reading the flag costs nothing, it runs only when
    # needed; on a GPU that read would stall the queue, so it always runs there.
    if log_mass.device.type == "cpu" and not bool(far.any()):
        return log_mass
    # Bins beyond: log Φ(high) + log(1 − Φ(low)/Φ(high)), each log Φ from the tail series.
    low_far, high_far = low.clamp(max=-_TAIL), high.clamp(max=-_TAIL)
    log_cdf_high = _log_ndtr_left_tail(high_far)
    gap = (_log_ndtr_left_tail(low_far) - log_cdf_high).clamp(max=-1e-30)
    return torch.where(far, log_cdf_high + _log1mexp(gap), log_mass)


def discretized_logistic_log_prob(x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) of each 8-bit pixel value x under Logistic(loc, scale) discretized; broadcasts.

    scale is the logistic's own scale s (standard deviation s·π/√3)."""
    lower, upper, width = _edges(x, loc, log_scale)
    # σ(u) − σ(l) = σ(u)·(1 − e^(l−u))·(1 − σ(l)): exact in log space for any width, so no case
    # needs the density. Bins above the location are mirrored, σ(u) − σ(l) = σ(−l) − σ(−u), so
    # that both softplus terms stay small where the mass is large.
    mirrored = lower + upper > 0
    low = torch.where(mirrored, -upper, lower)
    high = torch.where(mirrored, -lower, upper)
    return -F.softplus(-high) - F.softplus(low) + _log1mexp(-width)
