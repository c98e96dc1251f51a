"""Discretized Gaussian and logistic likelihoods: probabilities of the 256 values of an 8-bit
pixel, stable from σₓ = 1e-6 to 1e3 and for locations far outside [0, 1]."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import stats

from vae_bench.discretized import discretized_gaussian_log_prob, discretized_logistic_log_prob
from vae_bench.likelihoods import log_likelihood
from vae_bench.parameterizations import DEFAULT_OPTIONS

FAMILIES = {
    "gaussian": (discretized_gaussian_log_prob, stats.norm),
    "logistic": (discretized_logistic_log_prob, stats.logistic),
}
LEVELS = torch.arange(256, dtype=torch.float64) / 255  # every value an 8-bit pixel can take
LOCATIONS = [-1e4, -3.0, -0.2, 0.0, 1e-3, 0.3, 0.5, 0.77, 0.9999, 1.0, 1.7, 1e4]
SCALES = [1e-6, 1e-5, 1e-4, 1e-3, 3e-3, 0.01, 0.1, 1.0, 10.0, 100.0, 1e3]


def log_masses(family: str, loc: float, scale: float, dtype=torch.float64) -> torch.Tensor:
    log_prob, _ = FAMILIES[family]
    x = LEVELS.to(dtype)
    return log_prob(x, torch.tensor(loc, dtype=dtype), torch.tensor(math.log(scale), dtype=dtype))


@pytest.mark.parametrize("family", FAMILIES)
def test_the_256_probabilities_of_a_pixel_sum_to_one(family: str) -> None:
    for loc in LOCATIONS:
        for scale in SCALES:
            total = torch.logsumexp(log_masses(family, loc, scale), 0).exp().item()
            assert total == pytest.approx(1.0, abs=1e-9), (loc, scale)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_probability_is_at_most_one(family: str) -> None:
    for loc in LOCATIONS:
        for scale in SCALES:
            assert log_masses(family, loc, scale).max() <= 1e-12


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scale", [0.02, 0.1, 0.5])
@pytest.mark.parametrize("loc", [0.05, 0.5, 0.93])
def test_agrees_with_cdf_differences_at_moderate_scales(family: str, scale: float,
                                                         loc: float) -> None:
    # The slow, obvious reference: F(upper edge) − F(lower edge) in float64, the end bins
    # reaching to ±∞. Bins with mass below 1e-6 are left out: there the reference itself cancels.
    _, distribution = FAMILIES[family]
    x = LEVELS.numpy()
    upper = np.where(x > 1 - 1e-9, np.inf, x + 0.5 / 255)
    lower = np.where(x < 1e-9, -np.inf, x - 0.5 / 255)
    cdf = distribution(loc=loc, scale=scale).cdf
    reference = cdf(upper) - cdf(lower)
    got = log_masses(family, loc, scale).exp().numpy()
    kept = reference > 1e-6
    assert kept.sum() >= 3
    np.testing.assert_allclose(got[kept], reference[kept], rtol=1e-7)


@pytest.mark.parametrize("family", FAMILIES)
def test_float32_agrees_with_float64(family: str) -> None:
    # Same float32 inputs in both precisions, so that only the arithmetic differs. The worst case
    # is a location on a bin edge at σₓ ≈ 1e-6, where standardizing costs float32 digits.
    for loc in LOCATIONS:
        for scale in SCALES:
            loc32, log_scale32 = torch.tensor(loc), torch.tensor(math.log(scale))
            log_prob, _ = FAMILIES[family]
            x32 = LEVELS.float()
            single = log_prob(x32, loc32, log_scale32).double()
            double = log_prob(x32.double(), loc32.double(), log_scale32.double())
            error = (single - double).abs() / double.abs().clamp(min=1.0)
            assert error.max() < 1e-3, (loc, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_are_finite_at_tiny_scales_and_extreme_locations(family: str, dtype) -> None:
    log_prob, _ = FAMILIES[family]
    for loc in [-1e6, -1e3, -10.0, 0.0, 0.5, 1.0, 10.0, 1e3, 1e6]:
        for scale in [1e-6, 1e-3, 1.0, 1e3]:
            location = torch.full((256,), loc, dtype=dtype, requires_grad=True)
            log_scale = torch.full((256,), math.log(scale), dtype=dtype, requires_grad=True)
            out = log_prob(LEVELS.to(dtype), location, log_scale)
            out.sum().backward()
            assert torch.isfinite(out).all(), (loc, scale)
            assert torch.isfinite(location.grad).all(), (loc, scale)
            assert torch.isfinite(log_scale.grad).all(), (loc, scale)


@pytest.mark.parametrize("family", FAMILIES)
def test_gradients_match_central_differences(family: str) -> None:
    log_prob, _ = FAMILIES[family]
    step = 1e-6
    for loc in [-0.3, 0.2, 0.5, 1.2]:
        for scale in [1e-3, 0.01, 0.1, 2.0, 300.0]:
            location = torch.full((256,), loc, dtype=torch.float64, requires_grad=True)
            log_scale = torch.full((256,), math.log(scale), dtype=torch.float64,
                                   requires_grad=True)
            grads = torch.autograd.grad(log_prob(LEVELS, location, log_scale).sum(),
                                        (location, log_scale))
            for index, grad in enumerate(grads):
                args = [location.detach(), log_scale.detach()]
                up, down = list(args), list(args)
                up[index], down[index] = args[index] + step, args[index] - step
                numeric = (log_prob(LEVELS, *up) - log_prob(LEVELS, *down)) / (2 * step)
                torch.testing.assert_close(grad, numeric, rtol=1e-4, atol=1e-3,
                                           msg=f"loc={loc}, scale={scale}, input {index}")


@pytest.mark.parametrize("c", [-30.0, -1000.0, -1e5])
def test_float32_gradient_in_the_far_left_tail(c: float) -> None:
    # A pixel c bin-centre standard units below the location. torch.special.log_ndtr's own
    # float32 gradient is 5% off at −1000 and four orders off at −1e5; ours must not be.
    scale = 1e-3
    location = torch.tensor(0.5 - c * scale, requires_grad=True)
    discretized_gaussian_log_prob(torch.tensor(0.5), location,
                                  torch.tensor(math.log(scale))).backward()
    # d/dm log(Φ(u) − Φ(l)) = (φ(l) − φ(u)) / (σ·(Φ(u) − Φ(l))) at the float32 inputs, exactly.
    mpmath.mp.dps = 60
    m = mpmath.mpf(float(location.detach()))
    sigma = mpmath.mpf(float(torch.tensor(scale)))
    half = mpmath.mpf(1) / 510
    lower, upper = (mpmath.mpf(0.5) - half - m) / sigma, (mpmath.mpf(0.5) + half - m) / sigma
    mass = mpmath.ncdf(upper) - mpmath.ncdf(lower)
    expected = (mpmath.npdf(lower) - mpmath.npdf(upper)) / (sigma * mass)
    assert location.grad.item() == pytest.approx(float(expected), rel=1e-4)


def options(scale: str, param: str = "logvar", sigma: float = 0.1):
    return type("Options", (), {**vars(DEFAULT_OPTIONS), "scale": scale, "param": param,
                                "sigma": sigma})()


@pytest.mark.parametrize("name", ["discretized_gaussian", "discretized_logistic"])
def test_likelihood_sums_pixels_of_the_family_with_each_scale_mode(name: str) -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (4, 12), generator=g).double() / 255
    mean_out = torch.randn(4, 12, generator=g, dtype=torch.float64)
    family = FAMILIES[name.removeprefix("discretized_")][0]
    s_pixel = torch.randn(4, 12, generator=g, dtype=torch.float64)
    s_shared = torch.tensor([-2.0], dtype=torch.float64)
    cases = [
        ("pixel", s_pixel, 0.5 * s_pixel),  # logvar map: log σ = s/2
        ("shared", s_shared, 0.5 * s_shared),
        ("fixed", None, torch.tensor(math.log(0.1), dtype=torch.float64)),
    ]
    for scale, s_x, log_sigma in cases:
        got = log_likelihood(name, x, mean_out, s_x, options(scale))
        expected = family(x, torch.sigmoid(mean_out), log_sigma).sum(-1)
        torch.testing.assert_close(got, expected)
        assert torch.all(got <= 0)  # a probability, never a density above 1


def test_the_tail_series_changes_nothing_where_it_is_not_needed() -> None:
    # On the CPU the tail series runs only when some bin lies 10 σₓ beyond its mean (a GPU always
    # runs it): a pixel gets the same value whether or not another pixel needed the series.
    x = LEVELS.float()
    log_scale = torch.full((256,), math.log(0.03))
    close = torch.full((256,), 0.5)  # at σₓ = 0.03 the end values are 16 σₓ away: the series runs
    near_only = torch.full((256,), 0.5)
    near_only_scale = torch.full((256,), math.log(0.2))  # ≤ 2.5 σₓ away: the series never runs
    alone = discretized_gaussian_log_prob(x, near_only, near_only_scale)
    together = discretized_gaussian_log_prob(torch.stack([x, x]), torch.stack([close, near_only]),
                                             torch.stack([log_scale, near_only_scale]))
    assert torch.equal(together[1], alone)
    far_bins = (x - 0.5).abs() / 0.03 > 10.5
    assert far_bins.any()  # the first row did need the series
