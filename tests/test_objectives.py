from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import Bernoulli, ContinuousBernoulli, Normal, kl_divergence

from vae_bench.likelihoods import (
    LIKELIHOOD_NAMES,
    log_likelihood,
    mean_image,
    needs_sigma_output,
)
from vae_bench.objectives import (
    iwae_log_weights,
    iwae_nll,
    kl_per_dim,
    kl_standard_normal,
    log_mean_exp,
    log_normal,
    log_standard_normal,
    reparameterize,
)
from vae_bench.parameterizations import DEFAULT_OPTIONS, SIGMA_MAPS, get_sigma_map

B, D, L = 6, 20, 4


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def likelihood_opts(param: str = "softplus_std", sigma: float = 0.3,
                    scale: str = "pixel") -> SimpleNamespace:
    return SimpleNamespace(**vars(DEFAULT_OPTIONS), sigma=sigma, param=param, scale=scale)


def random_pixels(g: torch.Generator) -> Tensor:
    # Grey-level pixels in [0, 1], with some exact 0s and 1s as in MNIST.
    x = torch.rand(B, D, generator=g)
    x[:, :3] = 0.0
    x[:, 3:5] = 1.0
    return x


# ------------------------------------------------------------------ KL and Gaussian densities


def test_kl_matches_torch_distributions() -> None:
    g = generator()
    mu = torch.randn(B, L, generator=g) * 2
    logvar = torch.randn(B, L, generator=g) * 3
    expected = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(kl_standard_normal(mu, logvar), expected)
    torch.testing.assert_close(kl_per_dim(mu, logvar).sum(-1), expected)


def test_kl_is_accurate_near_the_prior() -> None:
    # σ² - 1 - log σ² ≈ logvar²/2 cancels near σ = 1: in float32, exp(lv) - 1 - lv is off by
    # over 100% at lv = 1e-4, while expm1(lv) - lv keeps a few digits.
    logvar = torch.tensor([[1e-4, -1e-4, 1e-3, -1e-3]])
    kl = kl_per_dim(torch.zeros_like(logvar), logvar)
    lv = logvar.double()
    expected = 0.5 * (torch.expm1(lv) - lv)
    assert torch.all(kl > 0)
    torch.testing.assert_close(kl.double(), expected, rtol=1e-2, atol=0.0)


def test_log_normal_matches_torch_distributions() -> None:
    g = generator(1)
    z = torch.randn(3, B, L, generator=g)
    mu = torch.randn(B, L, generator=g)
    logvar = torch.randn(B, L, generator=g)
    expected = Normal(mu, torch.exp(0.5 * logvar)).log_prob(z).sum(-1)
    torch.testing.assert_close(log_normal(z, mu, logvar), expected)
    expected_std = Normal(0.0, 1.0).log_prob(z).sum(-1)
    torch.testing.assert_close(log_standard_normal(z), expected_std)


def test_reparameterize() -> None:
    mu, sigma, eps = torch.tensor([1.0]), torch.tensor([2.0]), torch.tensor([-0.5])
    assert reparameterize(mu, sigma, eps).item() == 0.0


def test_log_mean_exp_is_stable() -> None:
    x = torch.tensor([[1000.0, 1000.0], [-1000.0, -1000.0 + math.log(3.0)]])
    expected = torch.tensor([1000.0, -1000.0 + math.log(2.0)])
    torch.testing.assert_close(log_mean_exp(x, dim=1), expected)


# ------------------------------------------------------------------ likelihoods


def test_bernoulli_matches_distribution_and_examples_bce() -> None:
    g = generator(2)
    x = random_pixels(g)
    logits = torch.randn(B, D, generator=g) * 3
    got = log_likelihood("bernoulli", x, logits, None, likelihood_opts())
    # validate_args=False: grey-level targets are outside Bernoulli's {0, 1} support check.
    expected = Bernoulli(logits=logits, validate_args=False).log_prob(x).sum(-1)
    torch.testing.assert_close(got, expected)
    # pytorch/examples vae/main.py: BCE(sigmoid(logits), x, reduction="sum"), per example here.
    bce = torch.stack(
        [
            F.binary_cross_entropy(torch.sigmoid(lo), xi, reduction="sum")
            for lo, xi in zip(logits, x, strict=True)
        ]
    )
    torch.testing.assert_close(got, -bce, rtol=1e-5, atol=1e-4)


def test_continuous_bernoulli_matches_distribution() -> None:
    g = generator(3)
    x = random_pixels(g)
    logits = torch.randn(B, D, generator=g) * 3
    logits[0, :4] = 0.0  # the distribution's Taylor branch around p = 0.5
    got = log_likelihood("continuous_bernoulli", x, logits, None, likelihood_opts())
    expected = ContinuousBernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(got, expected)


def test_gaussian_fixed_matches_distribution() -> None:
    g = generator(4)
    x = random_pixels(g)
    mean_out = torch.randn(B, D, generator=g)
    got = log_likelihood("gaussian_fixed", x, mean_out, None, likelihood_opts(sigma=0.1))
    expected = Normal(torch.sigmoid(mean_out), 0.1).log_prob(x).sum(-1)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("param", sorted(SIGMA_MAPS))
def test_gaussian_shared_matches_distribution(param: str) -> None:
    g = generator(5)
    x = random_pixels(g)
    mean_out = torch.randn(B, D, generator=g)
    s_x = torch.tensor(-1.3)
    opts = likelihood_opts(param=param)
    got = log_likelihood("gaussian_shared", x, mean_out, s_x, opts)
    sigma_x, _ = get_sigma_map(param).sigma_logvar(s_x, opts)
    expected = Normal(torch.sigmoid(mean_out), sigma_x).log_prob(x).sum(-1)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("param", sorted(SIGMA_MAPS))
def test_gaussian_pixel_matches_distribution(param: str) -> None:
    g = generator(6)
    x = random_pixels(g)
    mean_out = torch.randn(B, D, generator=g)
    s_x = torch.randn(B, D, generator=g) * 2
    opts = likelihood_opts(param=param)
    got = log_likelihood("gaussian_pixel", x, mean_out, s_x, opts)
    sigma_x, _ = get_sigma_map(param).sigma_logvar(s_x, opts)
    expected = Normal(torch.sigmoid(mean_out), sigma_x).log_prob(x).sum(-1)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("name", LIKELIHOOD_NAMES)
def test_likelihood_shape_and_mean_image(name: str) -> None:
    g = generator(7)
    x = random_pixels(g)
    mean_out = torch.randn(B, D, generator=g) * 5
    s_x = {None: None, "shared": torch.zeros(()), "pixel": torch.zeros(B, D)}
    opts = likelihood_opts()
    out = log_likelihood(name, x, mean_out, s_x[needs_sigma_output(name, opts)], opts)
    assert out.shape == (B,)
    assert torch.all(torch.isfinite(out))
    image = mean_image(name, mean_out)
    assert image.shape == (B, D)
    assert torch.all((image >= 0) & (image <= 1))


def test_continuous_bernoulli_mean_image_is_distribution_mean() -> None:
    mean_out = torch.randn(B, D, generator=generator(8))
    expected = ContinuousBernoulli(logits=mean_out).mean
    torch.testing.assert_close(mean_image("continuous_bernoulli", mean_out), expected)


def test_needs_sigma_output() -> None:
    got = {name: needs_sigma_output(name, likelihood_opts()) for name in LIKELIHOOD_NAMES}
    assert got == {
        "bernoulli": None,
        "continuous_bernoulli": None,
        "gaussian_fixed": None,
        "gaussian_shared": "shared",
        "gaussian_pixel": "pixel",
        "discretized_gaussian": "pixel",
        "discretized_logistic": "pixel",
    }
    for scale, output in (("pixel", "pixel"), ("shared", "shared"), ("fixed", None)):
        opts = likelihood_opts(scale=scale)
        assert needs_sigma_output("discretized_logistic", opts) == output
    with pytest.raises(ValueError, match="likelihood.scale='per_pixel' is not one of"):
        needs_sigma_output("discretized_gaussian", likelihood_opts(scale="per_pixel"))


def test_unknown_likelihood_lists_names() -> None:
    x = torch.zeros(1, 2)
    for call in (
        lambda: log_likelihood("gauss", x, x, None, likelihood_opts()),
        lambda: mean_image("gauss", x),
        lambda: needs_sigma_output("gauss", likelihood_opts()),
    ):
        with pytest.raises(ValueError) as info:
            call()
        for name in LIKELIHOOD_NAMES:
            assert name in str(info.value)


def test_learned_sigma_needs_s_x() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="s_x"):
        log_likelihood("gaussian_pixel", x, x, None, likelihood_opts())


# ------------------------------------------------------------------ IWAE


def replay(log_weights: Tensor) -> Callable[[int], Tensor]:
    """A sample_log_weights that hands out pre-drawn log weights (K, B) in order."""
    position = 0

    def sample(n: int) -> Tensor:
        nonlocal position
        out = log_weights[position : position + n]
        position += n
        return out

    return sample


def test_iwae_k1_is_minus_single_sample_elbo() -> None:
    g = generator(9)
    mu = torch.randn(B, L, generator=g)
    logvar = torch.randn(B, L, generator=g) * 0.5
    eps = torch.randn(1, B, L, generator=g)
    z = reparameterize(mu, torch.exp(0.5 * logvar), eps)
    log_px_z = torch.randn(1, B, generator=g) * 10 - 50
    log_w = iwae_log_weights(log_px_z, z, eps, logvar)
    # Single-sample ELBO estimate written independently with torch.distributions.
    q = Normal(mu, torch.exp(0.5 * logvar))
    elbo = log_px_z[0] + Normal(0.0, 1.0).log_prob(z[0]).sum(-1) - q.log_prob(z[0]).sum(-1)
    torch.testing.assert_close(iwae_nll(replay(log_w), k=1, chunk=1), -elbo)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_iwae_chunking_is_exact(chunk: int) -> None:
    k = 64
    log_w = torch.randn(k, B, generator=generator(10), dtype=torch.float64) * 5 - 100
    expected = -log_mean_exp(log_w, dim=0)
    torch.testing.assert_close(iwae_nll(replay(log_w), k=k, chunk=chunk), expected)


def test_iwae_rejects_bad_arguments() -> None:
    log_w = torch.zeros(4, B)
    with pytest.raises(ValueError):
        iwae_nll(replay(log_w), k=0, chunk=1)
    with pytest.raises(ValueError):
        iwae_nll(replay(log_w), k=4, chunk=0)


def test_iwae_tightens_towards_exact_log_px_on_linear_gaussian() -> None:
    # z ~ N(0, 1), x | z ~ N(a z, s²), so p(x) = N(0, a² + s²)
    # and p(z|x) = N(a x / (a² + s²), s² / (a² + s²)).
    a, s = 1.5, 0.5
    xs = torch.tensor([-2.0, -0.3, 0.8, 2.5], dtype=torch.float64)
    repeats = 400  # independent estimates per x, to average the Monte Carlo noise out
    x = xs.repeat(repeats)[:, None]  # (B, 1)
    log_px = Normal(0.0, math.sqrt(a**2 + s**2)).log_prob(x[:, 0])
    post_var = s**2 / (a**2 + s**2)
    # A deliberately imperfect q: shifted mean and a too-wide σ (heavier tails keep weights tame).
    mu = a * x / (a**2 + s**2) + 0.5 * math.sqrt(post_var)
    logvar = torch.full_like(mu, math.log(post_var * 1.5**2))
    sigma = torch.exp(0.5 * logvar)
    g = generator(11)

    def sample_log_weights(n: int) -> Tensor:
        eps = torch.randn(n, *mu.shape, generator=g, dtype=torch.float64)
        z = reparameterize(mu, sigma, eps)
        log_px_z = log_normal(x, a * z, torch.tensor(2 * math.log(s), dtype=torch.float64))
        return iwae_log_weights(log_px_z, z, eps, logvar)

    # Analytic ELBO: E_q[log N(x; a z, s²)] - KL(q || p(z)).
    expected_log_lik = -0.5 * (
        math.log(2 * math.pi * s**2) + ((x - a * mu) ** 2 + a**2 * sigma**2) / s**2
    )
    elbo = (expected_log_lik - kl_per_dim(mu, logvar)).sum(-1)
    gap_elbo = (log_px - elbo).mean().item()
    assert gap_elbo > 0.1  # q really is imperfect

    gaps = {
        k: (log_px + iwae_nll(sample_log_weights, k=k, chunk=100)).mean().item()
        for k in (1, 10, 1000)
    }
    # k = 1 is an unbiased ELBO estimate; each gap is log p(x) - bound, so it must shrink.
    assert gaps[1] == pytest.approx(gap_elbo, abs=0.05)
    assert gap_elbo > gaps[10] > gaps[1000] > -0.005
    assert gaps[10] < gap_elbo / 3
    assert gaps[1000] < 0.01


def test_iwae_log_weights_stay_finite_where_sigma_underflows() -> None:
    # A posterior with log σ² = −250 has σ = 0 in float32 (z == μ exactly); log q(z|x) is still
    # −½ Σ (log 2π + log σ² + ε²), which float64 computes without any underflow.
    g = generator(11)
    mu = torch.randn(B, L, generator=g)
    logvar = torch.full((B, L), -250.0)
    eps = torch.randn(3, B, L, generator=g)
    z = reparameterize(mu, torch.exp(0.5 * logvar), eps)
    assert torch.equal(z, mu.expand_as(z))  # σ underflowed: the old (z − μ)²/σ² was 0 · ∞
    log_px_z = torch.randn(3, B, generator=g) * 10 - 50
    log_w = iwae_log_weights(log_px_z, z, eps, logvar)
    assert torch.isfinite(log_w).all()
    z64 = mu.double().expand(3, B, L)
    expected = (log_px_z.double() + Normal(0.0, 1.0).log_prob(z64).sum(-1)
                + 0.5 * (math.log(2 * math.pi) - 250.0 + eps.double().square()).sum(-1))
    torch.testing.assert_close(log_w.double(), expected, rtol=1e-5, atol=1e-2)
