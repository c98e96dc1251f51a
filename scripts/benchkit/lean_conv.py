"""The lean loop of scripts/bench_conv.py: vae-bench's conv VAE written as plainly as a VAE can be
trained (in-memory uint8 images, one float conversion per batch, fused Adam, no logging, no
checks), in float32 and the default memory layout. What the trainer is measured against.

Same architecture and likelihood as `model=conv likelihood=gaussian_shared param=logvar`: two
stride-2 4x4 convolutions, a dense layer, μ and log σ² heads; the mirror image back; a Gaussian
p(x|z) with mean sigmoid(decoder output) and one learned log σₓ² for all pixels. The layers are
made in the trainer's order, so the same seed gives the same initial weights.
"""

from __future__ import annotations

import math
import time

import torch
from torch import nn

from benchkit.machine import CpuMeter, load_now, merge_cpu

LOG_2PI = math.log(2 * math.pi)


class LeanConvVAE(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], channels=(32, 64), hidden=256,
                 latent=32):
        super().__init__()
        c, h, w = image_shape
        c1, c2 = channels
        flat = c2 * (h // 4) * (w // 4)
        self.encoder = nn.Sequential(
            nn.Conv2d(c, c1, 4, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.ReLU(),
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU())
        self.mu = nn.Linear(hidden, latent)
        self.logvar = nn.Linear(hidden, latent)
        self.decoder = nn.Sequential(
            nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, flat), nn.ReLU(),
            nn.Unflatten(1, (c2, h // 4, w // 4)),
            nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.ReLU(),
            nn.ConvTranspose2d(c1, c, 4, stride=2, padding=1), nn.Flatten())
        self.logvar_x = nn.Parameter(torch.zeros(1))

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        """−ELBO per example, shape (B,)."""
        h = self.encoder(x)
        mu, logvar = self.mu(h), self.logvar(h)
        z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        mean = torch.sigmoid(self.decoder(z))
        nll = 0.5 * (LOG_2PI + self.logvar_x
                     + (x.flatten(1) - mean).square() * torch.exp(-self.logvar_x)).sum(1)
        kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(1)
        return nll + kl


class LeanConvLoop:
    """The lean loop, epoch by epoch; the test ELBO after each epoch is measured outside the
    timed training pass."""

    batch_size = 128

    def __init__(self, train_u8: torch.Tensor, test_u8: torch.Tensor, model_cfg, seed: int,
                 steps: int | None):
        self.train_u8, self.test_u8, self.steps = train_u8, test_u8, steps
        torch.manual_seed(seed)
        self.model = LeanConvVAE(tuple(train_u8.shape[1:]), tuple(model_cfg.channels),
                                 model_cfg.hidden[0], model_cfg.latent_dim)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3, fused=True)
        self.order_generator = torch.Generator().manual_seed(seed)
        self.epochs_done = 0
        self.epoch_seconds: list[float] = []
        self.eval_seconds: list[float] = []
        self.test_elbo: dict[int, float] = {}
        self.cpu: list[dict] = []
        self.load_before = load_now()

    def run(self, epochs: int) -> None:
        for epoch in range(self.epochs_done + 1, epochs + 1):
            meter = CpuMeter()
            self.train_epoch()
            self.test(epoch)
            self.cpu.append(meter.stop())
        self.epochs_done = epochs

    def train_epoch(self) -> None:
        model, optimizer, size = self.model, self.optimizer, self.batch_size
        start = time.perf_counter()
        order = torch.randperm(len(self.train_u8), generator=self.order_generator)
        steps = math.ceil(len(order) / size)
        for i in range(min(steps, self.steps or steps)):
            x = self.train_u8[order[i * size:(i + 1) * size]].float().div_(255)
            loss = model.loss(x).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        self.epoch_seconds.append(time.perf_counter() - start)

    @torch.no_grad()
    def test(self, epoch: int) -> None:
        start = time.perf_counter()
        total = sum(self.model.loss(self.test_u8[i:i + 1000].float().div_(255)).sum().item()
                    for i in range(0, len(self.test_u8), 1000))
        self.test_elbo[epoch] = -total / len(self.test_u8)
        self.eval_seconds.append(time.perf_counter() - start)

    def result(self) -> dict:
        return {"epoch_seconds": self.epoch_seconds, "eval_seconds": self.eval_seconds,
                "test_elbo": self.test_elbo, "load_before": self.load_before,
                "load_after": load_now(), "cpu": merge_cpu(self.cpu)}
