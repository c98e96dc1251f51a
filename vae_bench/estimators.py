"""ELBO and IWAE estimates for a VAE, built from the pure functions in objectives.py.

All values are in nats per example. The test-set ELBO samples z like the training ELBO does;
it is not the reconstruction of the posterior mean.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm import tqdm

from vae_bench.data import to_float
from vae_bench.likelihoods import log_likelihood
from vae_bench.models import VAE, Posterior
from vae_bench.objectives import (
    iwae_log_weights,
    iwae_nll,
    kl_per_dim,
    kl_standard_normal,
    reparameterize,
)


class ElboTerms(NamedTuple):
    recon_nll: Tensor  # (B,) −log p(x|z) at one sampled z
    kl: Tensor  # (B,) KL(q(z|x) ‖ N(0, I)), analytic
    posterior: Posterior
    z: Tensor


def elbo_terms(model: VAE, x: Tensor, generator: torch.Generator | None = None) -> ElboTerms:
    posterior = model.encode(x)
    eps = torch.randn(posterior.mu.shape, device=x.device, dtype=posterior.mu.dtype,
                      generator=generator)
    z = reparameterize(posterior.mu, posterior.sigma, eps)
    decoded = model.decode(z)
    log_px_z = log_likelihood(model.likelihood_name, x.flatten(1), decoded.mean_out, decoded.s_x,
                              model.likelihood_options)
    kl = kl_standard_normal(posterior.mu, posterior.logvar)
    return ElboTerms(-log_px_z, kl, posterior, z)


def iwae_nll_batch(model: VAE, x: Tensor, k: int, chunk: int,
                   generator: torch.Generator | None = None) -> Tensor:
    """−log p(x) per example with k importance samples, `chunk` of them in memory at once."""
    posterior = model.encode(x)
    flat_x = x.flatten(1)

    def sample_log_weights(n: int) -> Tensor:
        eps = torch.randn((n, *posterior.mu.shape), device=x.device, dtype=posterior.mu.dtype,
                          generator=generator)
        z = reparameterize(posterior.mu, posterior.sigma, eps)  # (n, B, L)
        decoded = model.decode(z.flatten(0, 1))
        repeated_x = flat_x.expand(n, *flat_x.shape).flatten(0, 1)
        s_x = decoded.s_x
        log_px_z = log_likelihood(model.likelihood_name, repeated_x, decoded.mean_out, s_x,
                                  model.likelihood_options).view(n, -1)
        return iwae_log_weights(log_px_z, z, eps, posterior.logvar)

    return iwae_nll(sample_log_weights, k, chunk)


def examples_bar(count: int, batch_size: int, desc: str, progress: bool) -> Iterator[int]:
    """The start index of each batch, counting examples on a progress bar when `progress`."""
    with tqdm(total=count, desc=desc, unit="ex", leave=False, disable=not progress,
              dynamic_ncols=True) as bar:
        for start in range(0, count, batch_size):
            yield start
            bar.update(min(batch_size, count - start))


@torch.no_grad()
def evaluate(model: VAE, images_u8: Tensor, batch_size: int, binarize: bool,
             generator: torch.Generator, progress: bool = False) -> dict[str, Tensor]:
    """Test-set means of ELBO, reconstruction and KL, with sampled z; plus per-example posterior
    means and per-dimension KL for latent-usage statistics. Values stay on the device.
    `progress` shows a bar on stderr."""
    model.eval()
    sums = torch.zeros(3, device=images_u8.device, dtype=torch.float64)
    posterior_means, posterior_logvars = [], []
    kl_per_dim_sum = torch.zeros(model.latent_dim, device=images_u8.device, dtype=torch.float64)
    for start in examples_bar(len(images_u8), batch_size, "test", progress):
        x = to_float(images_u8[start:start + batch_size], binarize, generator)
        terms = elbo_terms(model, x, generator)
        elbo = -(terms.recon_nll + terms.kl)
        sums += torch.stack([elbo.sum(), terms.recon_nll.sum(), terms.kl.sum()]).double()
        posterior_means.append(terms.posterior.mu)
        posterior_logvars.append(terms.posterior.logvar)
        kl_per_dim_sum += kl_per_dim(terms.posterior.mu, terms.posterior.logvar).sum(0).double()
    count = len(images_u8)
    model.train()
    return {
        "test/elbo": sums[0] / count,
        "test/recon_nll": sums[1] / count,
        "test/kl": sums[2] / count,
        "posterior_means": torch.cat(posterior_means),
        "posterior_logvars": torch.cat(posterior_logvars),
        "kl_per_dim": kl_per_dim_sum / count,
    }


@torch.no_grad()
def evaluate_iwae(model: VAE, images_u8: Tensor, batch_size: int, binarize: bool, k: int,
                  chunk: int, generator: torch.Generator, progress: bool = False) -> Tensor:
    """−log p(x) averaged over the images; `progress` shows a bar on stderr."""
    model.eval()
    total = torch.zeros((), device=images_u8.device, dtype=torch.float64)
    for start in examples_bar(len(images_u8), batch_size, f"IWAE k={k}", progress):
        x = to_float(images_u8[start:start + batch_size], binarize, generator)
        total += iwae_nll_batch(model, x, k, chunk, generator).sum().double()
    model.train()
    return total / len(images_u8)
