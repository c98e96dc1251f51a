"""Maps from an unconstrained network output s to the encoder's standard deviation σ.

Each map returns both σ and log σ², each computed stably from s, so that the KL term and the
reparameterized sample never go through log(exp(.)) or exp(log(.)) round trips that lose
precision or overflow. Adding a map is one decorated function and the map's inverse, the raw
output s that gives a chosen σ (used to start every map at the same σ, `model.init_sigma`):

    @register("my_map", inverse=lambda sigma, opts: ..., bounds=lambda opts: (0.0, math.inf))
    def _my_map(s: Tensor, opts: Any) -> tuple[Tensor, Tensor]:
        ...
        return sigma, logvar

Options are read by attribute access (`opts.floor`, ...), so a SimpleNamespace, a dataclass or an
OmegaConf node all work.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

SigmaLogvarFn = Callable[[Tensor, Any], tuple[Tensor, Tensor]]
InverseFn = Callable[[float, Any], float]
BoundsFn = Callable[[Any], tuple[float, float]]

DEFAULT_OPTIONS = SimpleNamespace(
    floor=1e-4,
    min_logvar=-10.0,
    max_logvar=2.0,
    sigma_min=1e-3,
    sigma_max=2.0,
)

# Below this, log(softplus(s)) = s - exp(s)/2 + ... equals s to float64 precision (e^-40 ~ 4e-18),
# while softplus(s) itself is still a normal float32, so either branch is exact at the seam.
_LOG_SOFTPLUS_CUTOFF = -40.0


@dataclass(frozen=True)
class SigmaMap:
    name: str
    sigma_logvar: SigmaLogvarFn  # (s, opts) -> (σ, log σ²)
    s_for_sigma: InverseFn  # (σ, opts) -> s with sigma_logvar(s)[0] == σ; σ inside the bounds
    sigma_bounds: BoundsFn  # (opts) -> (σ_lo, σ_hi); 0.0 / math.inf where unbounded
    natural: bool = False  # the mean head outputs η₁ = μ/σ² instead of μ


SIGMA_MAPS: dict[str, SigmaMap] = {}


def _unbounded(opts: Any) -> tuple[float, float]:
    return 0.0, math.inf


def register(
    name: str, *, inverse: InverseFn, bounds: BoundsFn = _unbounded, natural: bool = False
) -> Callable[[SigmaLogvarFn], SigmaLogvarFn]:
    """Decorator adding `fn(s, opts) -> (σ, log σ²)` and its inverse `inverse(σ, opts) -> s`
    to SIGMA_MAPS under `name`."""

    def decorator(fn: SigmaLogvarFn) -> SigmaLogvarFn:
        if name in SIGMA_MAPS:
            raise ValueError(f"sigma map {name!r} is already registered")
        SIGMA_MAPS[name] = SigmaMap(
            name=name, sigma_logvar=fn, s_for_sigma=inverse, sigma_bounds=bounds,
            natural=natural,
        )
        return fn

    return decorator


def get_sigma_map(name: str) -> SigmaMap:
    if name not in SIGMA_MAPS:
        raise ValueError(f"unknown sigma map {name!r}; registered: {', '.join(sorted(SIGMA_MAPS))}")
    return SIGMA_MAPS[name]


def encode_gaussian(
    sigma_map: SigmaMap | str, mean_raw: Tensor, s: Tensor, opts: Any
) -> tuple[Tensor, Tensor, Tensor]:
    """(μ, σ, log σ²) of the diagonal Gaussian posterior from the encoder's two heads."""
    if isinstance(sigma_map, str):
        sigma_map = get_sigma_map(sigma_map)
    sigma, logvar = sigma_map.sigma_logvar(s, opts)
    # A natural-parameter head predicts η₁ = μ/σ², so the mean is recovered through σ².
    mu = mean_raw * torch.exp(logvar) if sigma_map.natural else mean_raw
    return mu, sigma, logvar


# ---------------------------------------------------------------------------------------------
# Stable building blocks


def _log(x: float) -> float:
    # A zero floor or bound is allowed and simply drops out of the logaddexp below.
    return math.log(x) if x > 0 else -math.inf


def _inverse_softplus(y: float) -> float:
    """The x with softplus(x) = y > 0, i.e. log(e^y - 1), without overflow for large y."""
    if y <= 0:
        raise ValueError(f"softplus takes only positive values, not {y}")
    return y + math.log(-math.expm1(-y))


def _constant_like(s: Tensor, value: float) -> Tensor:
    # Filled on s's device: new_tensor(value) would copy from the host, and on a GPU a blocking
    # host-to-device copy makes every forward pass wait for the device.
    return torch.full((), value, device=s.device, dtype=s.dtype)


def _log_softplus(s: Tensor) -> Tensor:
    """log(softplus(s)); tends to s as s -> -inf instead of log(0) once softplus underflows."""
    # `<=`, not `<`: clamp passes no gradient at its edge, so the seam itself takes the s branch.
    far_left = s <= _LOG_SOFTPLUS_CUTOFF
    # torch.where backpropagates through both branches, so the unused one must stay finite.
    safe = s.clamp(min=_LOG_SOFTPLUS_CUTOFF)
    return torch.where(far_left, s, torch.log(F.softplus(safe)))


def _log_softplus_plus(s: Tensor, floor: float) -> Tensor:
    """log(softplus(s) + floor) without forming the sum, which loses s once softplus << floor."""
    return torch.logaddexp(_log_softplus(s), _constant_like(s, _log(floor)))


# ---------------------------------------------------------------------------------------------
# The maps


@register("logvar", inverse=lambda sigma, opts: 2.0 * math.log(sigma))
def _logvar(s: Tensor, opts: Any) -> tuple[Tensor, Tensor]:
    return torch.exp(0.5 * s), s


@register("logstd", inverse=lambda sigma, opts: math.log(sigma))
def _logstd(s: Tensor, opts: Any) -> tuple[Tensor, Tensor]:
    return torch.exp(s), 2.0 * s


@register("softplus_std", bounds=lambda opts: (opts.floor, math.inf),
          inverse=lambda sigma, opts: _inverse_softplus(sigma - opts.floor))
def _softplus_std(s: Tensor, opts: Any) -> tuple[Tensor, Tensor]:
    sigma = F.softplus(s) + opts.floor
    logvar = 2.0 * _log_softplus_plus(s, opts.floor)
    return sigma, logvar


@register("softplus_var", bounds=lambda opts: (math.sqrt(opts.floor), math.inf),
          inverse=lambda sigma, opts: _inverse_softplus(sigma**2 - opts.floor))
def _softplus_var(s: Tensor, opts: Any) -> tuple[Tensor, Tensor]:
    logvar = _log_softplus_plus(s, opts.floor)
    return torch.exp(0.5 * logvar), logvar


def _soft_clamped_bounds(opts: Any) -> tuple[float, float]:
    lo, hi = opts.min_logvar, opts.max_logvar
    # The second softplus lifts the upper end slightly: sup log σ² = lo + softplus(hi - lo).
    sup_logvar = lo + (hi - lo) + math.log1p(math.exp(lo - hi))
    return math.exp(0.5 * lo), math.exp(0.5 * sup_logvar)


def _soft_clamped_inverse(sigma: float, opts: Any) -> float:
    lo, hi = opts.min_logvar, opts.max_logvar
    below_max = lo + _inverse_softplus(2.0 * math.log(sigma) - lo)
    return hi - _inverse_softplus(hi - below_max)


@register("soft_clamped_logvar", bounds=_soft_clamped_bounds, inverse=_soft_clamped_inverse)
def _soft_clamped_logvar(s: Tensor, opts: Any) -> tuple[Tensor, Tensor]:
    # PETS (Chua et al. 2018): smooth clamps keep a gradient where a hard clamp would kill it.
    lo, hi = opts.min_logvar, opts.max_logvar
    below_max = hi - F.softplus(hi - s)
    logvar = lo + F.softplus(below_max - lo)
    return torch.exp(0.5 * logvar), logvar


def _sigmoid_bounded_inverse(sigma: float, opts: Any) -> float:
    fraction = (sigma - opts.sigma_min) / (opts.sigma_max - opts.sigma_min)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"sigma {sigma} is outside ({opts.sigma_min}, {opts.sigma_max})")
    return math.log(fraction) - math.log1p(-fraction)


@register("sigmoid_bounded", bounds=lambda opts: (opts.sigma_min, opts.sigma_max),
          inverse=_sigmoid_bounded_inverse)
def _sigmoid_bounded(s: Tensor, opts: Any) -> tuple[Tensor, Tensor]:
    lo, hi = opts.sigma_min, opts.sigma_max
    if not 0.0 <= lo < hi:
        raise ValueError(f"need 0 <= sigma_min < sigma_max, got {lo} and {hi}")
    # log σ = log(lo + (hi - lo)·sigmoid(s)), kept in log space so σ_min = 0 and s -> -inf work.
    log_sigma = torch.logaddexp(_constant_like(s, _log(lo)), math.log(hi - lo) + F.logsigmoid(s))
    # Not lo + (hi - lo)·sigmoid(s): sigmoid's backward, s(1 - s), is 0 once sigmoid rounds to 1
    # (s > 17 in float32), while logsigmoid's backward keeps the e^-s tail.
    return torch.exp(log_sigma), 2.0 * log_sigma


def _natural_bounds(opts: Any) -> tuple[float, float]:
    hi = 1.0 / math.sqrt(2.0 * opts.floor) if opts.floor > 0 else math.inf
    return 0.0, hi


@register("natural", bounds=_natural_bounds, natural=True,
          inverse=lambda sigma, opts: _inverse_softplus(0.5 / sigma**2 - opts.floor))
def _natural(s: Tensor, opts: Any) -> tuple[Tensor, Tensor]:
    # η₂ = -(softplus(s) + floor) < 0, and σ² = -1/(2η₂), so log σ² = -log 2 - log(-η₂).
    logvar = -math.log(2.0) - _log_softplus_plus(s, opts.floor)
    return torch.exp(0.5 * logvar), logvar
