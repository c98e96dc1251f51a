"""The VAE: a plain nn.Module whose encoder gives (μ, s) and whose decoder gives the likelihood's
parameters. The σ-map turns the raw output s into (σ, log σ²); nothing else changes between runs.

The heads are named modules (`encoder_mu_head`, `encoder_sigma_head`, `decoder_mean_head`,
`decoder_sigma_head`) so that diagnostics can read their gradients by name.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from vae_bench.likelihoods import needs_sigma_output
from vae_bench.parameterizations import encode_gaussian, get_sigma_map

ACTIVATION_LAYERS = {"relu": nn.ReLU, "tanh": nn.Tanh}


class Posterior(NamedTuple):
    mu: Tensor
    sigma: Tensor
    logvar: Tensor
    s: Tensor  # the σ head's raw output, after `sigma_head_scale`


class DecoderOutput(NamedTuple):
    mean_out: Tensor  # (B, D) raw: logits for Bernoulli, pre-sigmoid mean for Gaussians
    s_x: Tensor | None  # raw σₓ output: None, a learned scalar, or (B, D)


def mlp(widths: list[int], activation: str) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width_in, width_out in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(width_in, width_out), ACTIVATION_LAYERS[activation]()]
    return nn.Sequential(*layers)


def mlp_parts(cfg: DictConfig, image_shape: tuple[int, int, int]):
    """(encoder body, feature width, decoder body, decoder head factory) for the MLP models."""
    pixels = image_shape[0] * image_shape[1] * image_shape[2]
    hidden = list(cfg.hidden)
    encoder_body = nn.Sequential(nn.Flatten(), mlp([pixels, *hidden], cfg.activation))
    decoder_body = mlp([cfg.latent_dim, *reversed(hidden)], cfg.activation)

    def decoder_head() -> nn.Module:
        return nn.Linear(hidden[0], pixels)

    return encoder_body, hidden[-1], decoder_body, decoder_head


def conv_parts(cfg: DictConfig, image_shape: tuple[int, int, int]):
    """Two stride-2 convolutions each way: 28→14→7 for MNIST, 32→16→8 for CIFAR-10."""
    channels, height, width = image_shape
    if height % 4 or width % 4:
        raise ValueError(f"model=conv needs image sides divisible by 4, got {height}x{width}")
    act = ACTIVATION_LAYERS[cfg.activation]
    c1, c2 = cfg.channels
    (fc_width,) = cfg.hidden
    flat = c2 * (height // 4) * (width // 4)
    encoder_body = nn.Sequential(
        nn.Conv2d(channels, c1, 4, stride=2, padding=1), act(),
        nn.Conv2d(c1, c2, 4, stride=2, padding=1), act(),
        nn.Flatten(),
        nn.Linear(flat, fc_width), act(),
    )
    decoder_body = nn.Sequential(
        nn.Linear(cfg.latent_dim, fc_width), act(),
        nn.Linear(fc_width, flat), act(),
        nn.Unflatten(1, (c2, height // 4, width // 4)),
        nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), act(),
    )

    def decoder_head() -> nn.Module:
        return nn.Sequential(nn.ConvTranspose2d(c1, channels, 4, stride=2, padding=1),
                             nn.Flatten())

    return encoder_body, fc_width, decoder_body, decoder_head


def start_decoder_sigma(head: nn.Module | nn.Parameter, likelihood: DictConfig) -> None:
    """Set the shared σₓ, or the pixel head's output bias, to what `likelihood.param` maps to
    `likelihood.init_sigma`."""
    s0 = get_sigma_map(likelihood.param).s_for_sigma(likelihood.init_sigma, likelihood)
    if isinstance(head, nn.Parameter):
        head.fill_(s0)
        return
    biased = [module for module in head.modules() if getattr(module, "bias", None) is not None]
    biased[-1].bias.fill_(s0)


class VAE(nn.Module):
    def __init__(self, cfg: DictConfig, image_shape: tuple[int, int, int]):
        super().__init__()
        model_cfg = cfg.model
        self.image_shape = tuple(image_shape)
        self.latent_dim = model_cfg.latent_dim
        self.sigma_map = get_sigma_map(cfg.param.name)
        self.param_options = cfg.param
        self.likelihood_name = cfg.likelihood.name
        self.likelihood_options = cfg.likelihood
        self.sigma_head_scale = model_cfg.sigma_head_scale

        parts = conv_parts if model_cfg.name == "conv" else mlp_parts
        encoder_body, features, decoder_body, decoder_head = parts(model_cfg, image_shape)
        self.encoder_body = encoder_body
        self.encoder_mu_head = nn.Linear(features, self.latent_dim)
        self.encoder_sigma_head = nn.Linear(features, self.latent_dim)
        self.decoder_body = decoder_body
        self.decoder_mean_head = decoder_head()

        sigma_output = needs_sigma_output(self.likelihood_name, cfg.likelihood)
        if sigma_output == "pixel":
            self.decoder_sigma_head = decoder_head()
        elif sigma_output == "shared":
            self.decoder_sigma_head = nn.Parameter(torch.zeros(1))
        else:
            self.decoder_sigma_head = None

        with torch.no_grad():
            if sigma_output and cfg.likelihood.get("init_sigma") is not None:
                start_decoder_sigma(self.decoder_sigma_head, cfg.likelihood)
            for parameter in self.encoder_sigma_head.parameters():
                parameter.mul_(model_cfg.sigma_head_init_scale)
            if model_cfg.init_sigma is not None:
                s0 = self.sigma_map.s_for_sigma(model_cfg.init_sigma, cfg.param)
                self.encoder_sigma_head.weight.zero_()
                self.encoder_sigma_head.bias.fill_(s0 / self.sigma_head_scale)

    def encode(self, x: Tensor) -> Posterior:
        features = self.encoder_body(x)
        mean_raw = self.encoder_mu_head(features)
        s = self.encoder_sigma_head(features) * self.sigma_head_scale
        mu, sigma, logvar = encode_gaussian(self.sigma_map, mean_raw, s, self.param_options)
        return Posterior(mu, sigma, logvar, s)

    def decode(self, z: Tensor) -> DecoderOutput:
        features = self.decoder_body(z)
        mean_out = self.decoder_mean_head(features)
        if isinstance(self.decoder_sigma_head, nn.Parameter):
            return DecoderOutput(mean_out, self.decoder_sigma_head)
        if self.decoder_sigma_head is not None:
            return DecoderOutput(mean_out, self.decoder_sigma_head(features))
        return DecoderOutput(mean_out, None)

    def head_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Parameters of each head, for gradient and update statistics."""
        heads = {
            "mu_head": list(self.encoder_mu_head.parameters()),
            "sigma_head": list(self.encoder_sigma_head.parameters()),
        }
        if isinstance(self.decoder_sigma_head, nn.Parameter):
            heads["decoder_sigma"] = [self.decoder_sigma_head]
        elif self.decoder_sigma_head is not None:
            heads["decoder_sigma"] = list(self.decoder_sigma_head.parameters())
        return heads
