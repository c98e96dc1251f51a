from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from vae_bench.parameterizations import (
    DEFAULT_OPTIONS,
    SIGMA_MAPS,
    encode_gaussian,
    get_sigma_map,
    register,
)

OPTS = DEFAULT_OPTIONS
ALL_MAPS = sorted(SIGMA_MAPS)


def s_grid(dtype: torch.dtype = torch.float32, lo: float = -80.0, hi: float = 80.0) -> Tensor:
    # An odd count puts s = 0 on the grid; the seam of the log-softplus branch (-40) is on it too.
    return torch.linspace(lo, hi, 4001, dtype=dtype)


def softplus64(s: Tensor) -> Tensor:
    # Textbook softplus; exp(s) cannot overflow float64 on [-80, 80].
    return torch.log1p(torch.exp(s))


def sigmoid64(s: Tensor) -> Tensor:
    return 1.0 / (1.0 + torch.exp(-s))


# Float64 textbook σ(s) for each map. The references only use exp / log1p of arguments within
# [-162, 162], which float64 represents to full relative precision, so they are accurate there.
def reference_sigma(name: str, s: Tensor, o: SimpleNamespace) -> Tensor:
    if name == "logvar":
        return torch.exp(s / 2)
    if name == "logstd":
        return torch.exp(s)
    if name == "softplus_std":
        return softplus64(s) + o.floor
    if name == "softplus_var":
        return torch.sqrt(softplus64(s) + o.floor)
    if name == "soft_clamped_logvar":
        logvar = o.max_logvar - softplus64(o.max_logvar - s)
        logvar = o.min_logvar + softplus64(logvar - o.min_logvar)
        return torch.exp(logvar / 2)
    if name == "sigmoid_bounded":
        return o.sigma_min + (o.sigma_max - o.sigma_min) * sigmoid64(s)
    if name == "natural":
        eta2 = -(softplus64(s) + o.floor)
        return torch.sqrt(-1.0 / (2.0 * eta2))
    raise KeyError(f"no reference for {name!r}: add one when registering a new map")


# Analytic dσ/ds for each map, float64.
def reference_dsigma(name: str, s: Tensor, o: SimpleNamespace) -> Tensor:
    sigma = reference_sigma(name, s, o)
    if name == "logvar":
        return sigma / 2
    if name == "logstd":
        return sigma
    if name == "softplus_std":
        return sigmoid64(s)
    if name == "softplus_var":
        return sigmoid64(s) / (2 * sigma)
    if name == "soft_clamped_logvar":
        inner = o.max_logvar - softplus64(o.max_logvar - s)
        dlogvar = sigmoid64(inner - o.min_logvar) * sigmoid64(o.max_logvar - s)
        return sigma / 2 * dlogvar
    if name == "sigmoid_bounded":
        return (o.sigma_max - o.sigma_min) * sigmoid64(s) * sigmoid64(-s)
    if name == "natural":
        return -(sigma**3) * sigmoid64(s)
    raise KeyError(f"no derivative for {name!r}: add one when registering a new map")


def run_map(name: str, s: Tensor) -> tuple[Tensor, Tensor]:
    return get_sigma_map(name).sigma_logvar(s, OPTS)


@pytest.mark.parametrize("name", ALL_MAPS)
def test_sigma_positive_and_within_bounds(name: str) -> None:
    sigma, _ = run_map(name, s_grid())
    lo, hi = get_sigma_map(name).sigma_bounds(OPTS)
    assert torch.all(sigma > 0)
    assert torch.all(torch.isfinite(sigma))
    # Float32 rounds a bound like floor = 1e-4 by up to half an ulp, hence the relative slack.
    assert torch.all(sigma >= lo * (1 - 1e-6))
    assert torch.all(sigma <= hi * (1 + 1e-6))


@pytest.mark.parametrize("name", ALL_MAPS)
def test_logvar_matches_float64_reference(name: str) -> None:
    s = s_grid()
    _, logvar = run_map(name, s)
    # Reference from the same float32 inputs, so only the map's arithmetic is being judged.
    expected = torch.log(reference_sigma(name, s.double(), OPTS) ** 2)
    assert torch.all(torch.isfinite(logvar))
    torch.testing.assert_close(logvar.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ALL_MAPS)
def test_sigma_matches_float64_reference(name: str) -> None:
    s = s_grid()
    sigma, _ = run_map(name, s)
    expected = reference_sigma(name, s.double(), OPTS)
    torch.testing.assert_close(sigma.double(), expected, rtol=1e-5, atol=0.0)


@pytest.mark.parametrize("name", ALL_MAPS)
def test_exp_logvar_is_sigma_squared(name: str) -> None:
    sigma, logvar = run_map(name, s_grid())
    # In float64, since σ² of logstd at s = 80 overflows float32.
    torch.testing.assert_close(torch.exp(logvar.double()), sigma.double() ** 2, rtol=2e-5, atol=0.0)


@pytest.mark.parametrize("name", ALL_MAPS)
def test_dsigma_matches_analytic_derivative(name: str) -> None:
    s = s_grid().requires_grad_()
    sigma, _ = run_map(name, s)
    (grad,) = torch.autograd.grad(sigma.sum(), s)
    expected = reference_dsigma(name, s.detach().double(), OPTS)
    torch.testing.assert_close(grad.double(), expected, rtol=1e-4, atol=1e-30)


@pytest.mark.parametrize("name", ALL_MAPS)
def test_dlogvar_matches_analytic_derivative(name: str) -> None:
    # The KL gradient flows through log σ², so it must be accurate too: d log σ²/ds = 2 σ'/σ.
    s = s_grid().requires_grad_()
    _, logvar = run_map(name, s)
    (grad,) = torch.autograd.grad(logvar.sum(), s)
    s64 = s.detach().double()
    expected = 2 * reference_dsigma(name, s64, OPTS) / reference_sigma(name, s64, OPTS)
    torch.testing.assert_close(grad.double(), expected, rtol=1e-4, atol=1e-30)


@pytest.mark.parametrize("name", ALL_MAPS)
def test_gradients_finite(name: str) -> None:
    s = s_grid().requires_grad_()
    sigma, logvar = run_map(name, s)
    (grad_sigma,) = torch.autograd.grad(sigma.sum(), s, retain_graph=True)
    (grad_logvar,) = torch.autograd.grad(logvar.sum(), s)
    assert torch.all(torch.isfinite(grad_sigma))
    assert torch.all(torch.isfinite(grad_logvar))


@pytest.mark.parametrize("name", ALL_MAPS)
def test_bounded_maps_stay_finite_far_out(name: str) -> None:
    lo, hi = get_sigma_map(name).sigma_bounds(OPTS)
    if lo == 0.0 and hi == math.inf:
        pytest.skip("exp-type maps overflow by design outside [-80, 80]")
    s = s_grid(lo=-1e4, hi=1e4).requires_grad_()
    sigma, logvar = run_map(name, s)
    (grad,) = torch.autograd.grad(sigma.sum() + logvar.sum(), s)
    assert torch.all(torch.isfinite(logvar))
    assert torch.all(sigma > 0)
    assert torch.all(torch.isfinite(grad))


def test_logstd_is_logvar_of_twice_s() -> None:
    s = s_grid()
    sigma_std, logvar_std = run_map("logstd", s)
    sigma_var, logvar_var = run_map("logvar", 2 * s)
    torch.testing.assert_close(sigma_std, sigma_var)
    torch.testing.assert_close(logvar_std, logvar_var)


def test_natural_mean_and_negative_eta2() -> None:
    s = s_grid()
    eta1 = torch.randn(s.shape, generator=torch.Generator().manual_seed(0))
    mu, sigma, logvar = encode_gaussian(get_sigma_map("natural"), eta1, s, OPTS)
    eta2 = -0.5 * torch.exp(-logvar.double())
    assert torch.all(eta2 < 0)
    torch.testing.assert_close(eta2, -(softplus64(s.double()) + OPTS.floor), rtol=1e-5, atol=0.0)
    torch.testing.assert_close(mu, eta1 * sigma**2, rtol=1e-5, atol=0.0)


@pytest.mark.parametrize("name", [n for n in ALL_MAPS if not SIGMA_MAPS[n].natural])
def test_non_natural_mean_is_passed_through(name: str) -> None:
    mean_raw = torch.randn(3, 5)
    s = torch.randn(3, 5)
    mu, sigma, logvar = encode_gaussian(name, mean_raw, s, OPTS)
    assert mu is mean_raw
    expected_sigma, expected_logvar = run_map(name, s)
    torch.testing.assert_close(sigma, expected_sigma)
    torch.testing.assert_close(logvar, expected_logvar)


def test_unknown_name_lists_registered_maps() -> None:
    with pytest.raises(ValueError) as info:
        get_sigma_map("logvarr")
    for name in ALL_MAPS:
        assert name in str(info.value)


def test_register_adds_one_map_and_rejects_duplicates() -> None:
    def half_softplus(s: Tensor, o: SimpleNamespace) -> tuple[Tensor, Tensor]:
        sigma = torch.nn.functional.softplus(s) / 2
        return sigma, 2 * torch.log(sigma)

    def inverse(sigma: float, o: SimpleNamespace) -> float:
        return math.log(math.expm1(2 * sigma))

    try:
        assert register("test_half_softplus", inverse=inverse)(half_softplus) is half_softplus
        assert get_sigma_map("test_half_softplus").sigma_bounds(OPTS) == (0.0, math.inf)
        with pytest.raises(ValueError, match="already registered"):
            register("test_half_softplus", inverse=inverse)(half_softplus)
    finally:
        SIGMA_MAPS.pop("test_half_softplus", None)


@pytest.mark.parametrize("name", ALL_MAPS)
@pytest.mark.parametrize("sigma", [1e-3, 0.05, 0.5, 1.0, 1.5])
def test_inverse_gives_the_raw_output_of_a_chosen_sigma(name: str, sigma: float) -> None:
    sigma_map = get_sigma_map(name)
    lo, hi = sigma_map.sigma_bounds(OPTS)
    if not lo * 1.01 < sigma < hi * 0.99:  # at a bound the inverse is ±inf or undefined
        pytest.skip(f"σ={sigma} is not strictly inside {name}'s bounds ({lo}, {hi})")
    s = torch.tensor([sigma_map.s_for_sigma(sigma, OPTS)], dtype=torch.float64)
    got_sigma, got_logvar = sigma_map.sigma_logvar(s, OPTS)
    assert got_sigma.item() == pytest.approx(sigma, rel=1e-9)
    assert got_logvar.item() == pytest.approx(2 * math.log(sigma), abs=1e-9)


def test_options_are_read_by_attribute() -> None:
    opts = SimpleNamespace(floor=0.5, min_logvar=-1.0, max_logvar=1.0, sigma_min=0.1, sigma_max=0.2)
    s = torch.tensor([-80.0, 0.0, 80.0])
    sigma, _ = get_sigma_map("softplus_std").sigma_logvar(s, opts)
    assert sigma[0].item() == pytest.approx(0.5)
    sigma, _ = get_sigma_map("sigmoid_bounded").sigma_logvar(s, opts)
    assert sigma[0].item() == pytest.approx(0.1)
    assert sigma[-1].item() == pytest.approx(0.2)
