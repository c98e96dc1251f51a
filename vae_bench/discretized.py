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
_LOG_2 = math.log(2.0)
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
    """The bin's edges in standard units, (x ∓ h − loc)/scale, and the bin's width there."""
    inv_scale = torch.exp(-log_scale)
    centre = (x - loc) * inv_scale
    half_width = HALF_BIN * inv_scale
    lower = (centre - half_width).clamp(-_EDGE_LIMIT, _EDGE_LIMIT)
    upper = (centre + half_width).clamp(-_EDGE_LIMIT, _EDGE_LIMIT)
    return lower, upper, 2.0 * half_width


def _end_bins(x: Tensor) -> tuple[Tensor, Tensor]:
    # Pixels are k/255 in floating point: compare with half a bin, never with 0.0 or 1.0 exactly.
    return x < HALF_BIN, x > 1.0 - HALF_BIN


def _log_ndtr(x: Tensor) -> Tensor:
    """log Φ(x) with an accurate gradient in the left tail.

    torch.special.log_ndtr's value is fine there, but its float32 gradient is not (955 instead
    of 1000 at x = −1000, 0.4 instead of 1e5 at x = −1e5). For x < 0 we write
    Φ(x) = erfcx(−x/√2)·e^(−x²/2)/2, whose −x²/2 carries the gradient exactly."""
    left = x.clamp(max=0.0)  # each branch gets inputs it is finite at (torch.where's backward)
    right = x.clamp(min=0.0)
    left_tail = torch.log(torch.special.erfcx(-left * _SQRT_HALF)) - _LOG_2 - 0.5 * left.square()
    return torch.where(x < 0, left_tail, torch.special.log_ndtr(right))


def _log_ndtr_gap(low: Tensor, high: Tensor, width: Tensor) -> Tensor:
    """log Φ(low) − log Φ(high) for low < high, where high − low = width.

    With both edges in the left tail each log Φ is about −c²/2, and their difference would
    cancel; the quadratic parts are subtracted in closed form, (high² − low²)/2 = width·c."""
    both_left = high <= 0
    low_left, high_left = low.clamp(max=0.0), high.clamp(max=0.0)
    tails = (torch.log(torch.special.erfcx(-low_left * _SQRT_HALF))
             - torch.log(torch.special.erfcx(-high_left * _SQRT_HALF))
             + 0.5 * width * (low_left + high_left))
    return torch.where(both_left, tails, _log_ndtr(low) - _log_ndtr(high))


def discretized_gaussian_log_prob(x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) of each 8-bit pixel value x under N(loc, scale²) discretized; broadcasts."""
    lower, upper, width = _edges(x, loc, log_scale)
    first_bin, last_bin = _end_bins(x)

    # log(Φ(upper) − Φ(lower)) from the side where the bin lies in the left tail: mirror bins
    # whose centre is above 0, since Φ(u) − Φ(l) = Φ(−l) − Φ(−u), and 1 − Φ would cancel.
    mirrored = lower + upper > 0
    low = torch.where(mirrored, -upper, lower)
    high = torch.where(mirrored, -lower, upper)
    gap = _log_ndtr_gap(low, high, width)  # ≤ 0

    # Narrow bins: log(w·φ(c)) + w²(c² − 1)/24, the centre rule with its leading correction.
    centre = 0.5 * (lower + upper)
    centre_rule = (torch.log(width) - _LOG_SQRT_2PI - 0.5 * centre.square()
                   + width.square() * (centre.square() - 1.0) / 24.0)
    narrow = width * centre.abs().clamp(min=1.0) < _CENTRE_RULE_BELOW.get(centre.dtype, 0.2)
    # torch.where backpropagates through both branches: keep the unused one finite.
    safe_gap = torch.where(narrow, torch.full_like(gap, -1.0), gap).clamp(max=-1e-30)
    difference = _log_ndtr(high) + _log1mexp(safe_gap)
    interior = torch.where(narrow, centre_rule, difference)

    log_mass = torch.where(first_bin, _log_ndtr(upper), interior)
    return torch.where(last_bin, _log_ndtr(-lower), log_mass)


def discretized_logistic_log_prob(x: Tensor, loc: Tensor, log_scale: Tensor) -> Tensor:
    """log P(x) of each 8-bit pixel value x under Logistic(loc, scale) discretized; broadcasts.

    scale is the logistic's own scale s (standard deviation s·π/√3)."""
    lower, upper, width = _edges(x, loc, log_scale)
    first_bin, last_bin = _end_bins(x)
    # σ(u) − σ(l) = e^u (1 − e^(l−u)) / ((1 + e^l)(1 + e^u)), with l − u = −w: exact in log
    # space for any width, so no case needs the density. Bins above the location are mirrored,
    # σ(u) − σ(l) = σ(−l) − σ(−u), so that u − softplus(u) never cancels.
    mirrored = lower + upper > 0
    low = torch.where(mirrored, -upper, lower)
    high = torch.where(mirrored, -lower, upper)
    interior = high + _log1mexp(-width) - F.softplus(low) - F.softplus(high)
    log_mass = torch.where(first_bin, -F.softplus(-upper), interior)
    return torch.where(last_bin, -F.softplus(lower), log_mass)
