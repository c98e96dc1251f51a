"""Statistics that tell σ-parameterizations apart: what reaches the σ head, how σ moves and
saturates, how many latent units stay in use.

Every value is computed on the training device at its cadence and kept there; the host reads
them back only when `flush` is called at log time, so no step waits on the device. Methods take
the index of the optimizer step they observe; values are logged at index + 1, the step count
after that update, which is the x-axis of every other tag.
"""

from __future__ import annotations

import math

import torch
from matplotlib.figure import Figure  # no pyplot: figures are drawn off-screen, never shown
from matplotlib.ticker import MaxNLocator
from omegaconf import DictConfig
from torch import Tensor

from vae_bench.data import to_float
from vae_bench.likelihoods import mean_image
from vae_bench.models import VAE, Posterior
from vae_bench.tracking import Tracker

QUANTILE_LEVELS = torch.linspace(0, 1, 101)
ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al. 2015: Cov_x(E_q[z_d]) > 0.01
SATURATION_TOLERANCE = 0.01  # σ within 1% of a bound of its map counts as saturated
# Percentiles of σ over the test set (every example and latent) logged each epoch; the summary
# keeps all of 0..100 of log σ at the last evaluation.
SIGMA_PERCENTILES = (1, 10, 50, 90, 99)

LAYOUT = {
    "vae-bench: objective": {
        "ELBO (train vs test)": ["Multiline", ["train/elbo", "test/elbo"]],
        "reconstruction NLL": ["Multiline", ["train/recon_nll", "test/recon_nll"]],
        "KL": ["Multiline", ["train/kl", "test/kl"]],
        "importance-weighted NLL (test)": ["Multiline", ["test/nll_iwae"]],
    },
    "vae-bench: gradients": {
        "mu head vs sigma head gradient norm": [
            "Multiline", ["grad/norm_mu_head", "grad/norm_sigma_head"]],
        "update / weight ratio": [
            "Multiline", ["grad/update_ratio_mu_head", "grad/update_ratio_sigma_head"]],
        "sigma head: norm ratio and SNR": [
            "Multiline", ["grad/sigma_mu_ratio", "grad/snr_sigma_head"]],
    },
    "vae-bench: posterior": {
        "sigma mean / min / max": [
            "Multiline", ["posterior/sigma_mean", "posterior/sigma_min", "posterior/sigma_max"]],
        "raw s mean / min / max": [
            "Multiline", ["posterior/s_mean", "posterior/s_min", "posterior/s_max"]],
        # A fraction in [0, 1] and a count up to the latent size: one axis would flatten the
        # fraction, so each gets its own chart.
        "saturated fraction of sigma": [
            "Multiline", ["posterior/saturated_frac", "posterior/test_saturated_frac"]],
        "sigma percentiles (test)": [
            "Multiline", [f"posterior/test_sigma_p{p}" for p in SIGMA_PERCENTILES]],
        "active latent units (test)": ["Multiline", ["latent/active_units"]],
    },
}


def _norm(tensors: list[Tensor]) -> Tensor:
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t) for t in tensors]))


def saturated_fraction(sigma: Tensor, bounds: tuple[float, float]) -> Tensor:
    low, high = bounds
    saturated = torch.zeros_like(sigma, dtype=torch.bool)
    if low > 0:
        saturated |= sigma <= low * (1 + SATURATION_TOLERANCE)
    if math.isfinite(high):
        saturated |= sigma >= high * (1 - SATURATION_TOLERANCE)
    return saturated.float().mean()


class Diagnostics:
    def __init__(self, model: VAE, cfg: DictConfig, tracker: Tracker):
        self.model = model
        self.cfg = cfg
        self.tracker = tracker
        self.heads = model.head_parameters()
        self.bounds = model.sigma_map.sigma_bounds(model.param_options)
        self.pending: list[tuple[int, dict[str, Tensor]]] = []
        self._s: Tensor | None = None
        self._before_update: dict[str, list[Tensor]] = {}
        self._snr_sum: Tensor | None = None
        self._snr_sq_sum: Tensor | None = None
        self._snr_count = 0

    def state(self) -> dict:
        """The gradient-SNR sums span several steps: a checkpoint inside a window carries them."""
        return {"snr_sum": self._snr_sum, "snr_sq_sum": self._snr_sq_sum,
                "snr_count": self._snr_count}

    def load_state(self, state: dict, device: torch.device) -> None:
        if not state:  # checkpointed with diagnostics off: windows start afresh
            return

        def to_device(value):
            return value.to(device) if torch.is_tensor(value) else value

        self._snr_sum = to_device(state["snr_sum"])
        self._snr_sq_sum = to_device(state["snr_sq_sum"])
        self._snr_count = state["snr_count"]

    def write_layout(self) -> None:
        self.tracker.custom_scalars(LAYOUT)

    def _due(self, step: int) -> bool:
        return step % self.cfg.grad_every == 0

    def before_backward(self, step: int, posterior: Posterior) -> None:
        if self._due(step):
            self._s = posterior.s
            self._s.retain_grad()
            self.pending.append((step, self._posterior_stats(posterior)))
        if step % self.cfg.hist_every == 0:
            self._logvar_histogram(posterior.logvar.detach(), step)

    def _posterior_stats(self, posterior: Posterior) -> dict[str, Tensor]:
        sigma, s = posterior.sigma.detach().float(), posterior.s.detach().float()
        return {
            "posterior/sigma_mean": sigma.mean(), "posterior/sigma_min": sigma.min(),
            "posterior/sigma_max": sigma.max(), "posterior/s_mean": s.mean(),
            "posterior/s_min": s.min(), "posterior/s_max": s.max(),
            "posterior/saturated_frac": saturated_fraction(sigma, self.bounds),
        }

    def _logvar_histogram(self, logvar: Tensor, step: int) -> None:
        finite = torch.isfinite(logvar)
        # Histograms are rare (hist_every), so reading back here costs nothing per step.
        if finite.any():  # TensorBoard rejects an empty histogram
            self.tracker.histogram("posterior/logvar", logvar[finite], step + 1)
        self.pending.append((step, {"posterior/logvar_nonfinite": (~finite).sum()}))

    def after_backward(self, step: int, total_norm: Tensor) -> None:
        """Gradient statistics; `total_norm` is the pre-clipping norm of the whole model."""
        sigma_grads = [p.grad for p in self.heads["sigma_head"]]
        in_window = step % self.cfg.grad_every < self.cfg.snr_window
        if in_window:
            flat = torch.cat([g.detach().flatten() for g in sigma_grads]).double()
            if step % self.cfg.grad_every == 0:
                self._snr_sum, self._snr_sq_sum, self._snr_count = 0.0, 0.0, 0
            self._snr_sum = self._snr_sum + flat
            self._snr_sq_sum = self._snr_sq_sum + flat.square()
            self._snr_count += 1
            if self._snr_count == self.cfg.snr_window:
                self.pending.append((step, {"grad/snr_sigma_head": self._snr()}))
        if not self._due(step):
            return
        stats = {"grad/norm_total": total_norm.detach().float()}
        for name, params in self.heads.items():
            grads = [p.grad for p in params if p.grad is not None]
            if grads:
                tag = "grad/norm_decoder_sigma" if name == "decoder_sigma" else f"grad/norm_{name}"
                stats[tag] = _norm(grads)
        stats["grad/sigma_mu_ratio"] = stats["grad/norm_sigma_head"] / stats["grad/norm_mu_head"]
        if self._s is not None and self._s.grad is not None:
            # loss is the batch mean: scale by B to get the per-example derivative.
            stats["grad/dloss_ds_abs"] = self._s.grad.abs().mean() * self._s.shape[0]
        self._s = None
        self._before_update = {name: [p.detach().clone() for p in self.heads[name]]
                               for name in ("mu_head", "sigma_head")}
        self.pending.append((step, stats))

    def _snr(self) -> Tensor:
        n = self._snr_count
        mean = self._snr_sum / n
        variance = (self._snr_sq_sum / n - mean.square()).clamp(min=0) * n / (n - 1)
        return (mean.abs() / (variance.sqrt() + 1e-12)).mean().float()

    def after_step(self, step: int) -> None:
        if not self._before_update:
            return
        stats = {}
        for name, old in self._before_update.items():
            new = [p.detach() for p in self.heads[name]]
            delta = _norm([n - o for n, o in zip(new, old)])
            stats[f"grad/update_ratio_{name}"] = delta / _norm(old)
        self._before_update = {}
        self.pending.append((step, stats))

    def flush(self, epoch: int) -> None:
        """Read every pending statistic back in one go and log it at its own step."""
        by_step: dict[int, dict[str, Tensor]] = {}
        for step, stats in self.pending:
            by_step.setdefault(step, {}).update(stats)
        self.pending = []
        for step in sorted(by_step):
            tags = list(by_step[step])
            values = torch.stack([by_step[step][t].float() for t in tags]).tolist()
            self.tracker.scalars(dict(zip(tags, values)), step + 1, epoch)


@torch.no_grad()
def latent_usage(results: dict, tracker: Tracker, step: int, model: VAE, test_images: Tensor,
                 binarize: bool, images: bool) -> dict[str, float]:
    """Active units (Burda et al.'s criterion: the variance over the test set of each latent's
    posterior mean above 0.01), the share of test σ within 1% of a bound of the map, and
    per-dimension KL from an evaluation, plus image grids."""
    activity = results["posterior_means"].double().var(dim=0)
    active_units = int((activity > ACTIVE_UNIT_THRESHOLD).sum().item())
    kl_per_dim = results["kl_per_dim"].float()
    tracker.histogram("latent/kl_per_dim", kl_per_dim, step)
    logvar = results["posterior_logvars"].float()
    bounds = model.sigma_map.sigma_bounds(model.param_options)
    saturated = saturated_fraction((0.5 * logvar).exp(), bounds).item()
    finite = logvar[torch.isfinite(logvar)]
    if finite.numel():
        tracker.histogram("posterior/test_logvar", finite, step)
    tracker.figure("latent/kl_per_dim_sorted", sorted_kl_figure(kl_per_dim.cpu()), step)
    if images:
        log_images(model, test_images, binarize, tracker, step)
    return {"latent/active_units": active_units, "posterior/test_saturated_frac": saturated}


def log_sigma_quantiles(results: dict) -> list[float]:
    """Percentiles 0..100 of log σ over every test example and latent dimension: the whole σ
    distribution at an evaluation, small enough for summary.json."""
    log_sigma = 0.5 * results["posterior_logvars"].float().flatten().cpu()
    return torch.quantile(log_sigma, QUANTILE_LEVELS).tolist()


def sigma_percentile_scalars(log_sigma_quantiles: list[float]) -> dict[str, float]:
    """σ's test percentiles SIGMA_PERCENTILES, from the 0..100 percentiles of log σ."""
    return {f"posterior/test_sigma_p{p}": math.exp(log_sigma_quantiles[p])
            for p in SIGMA_PERCENTILES}


def sorted_kl_figure(kl_per_dim: Tensor):
    values = torch.sort(kl_per_dim, descending=True).values.numpy()
    figure = Figure(figsize=(5, 2.5), dpi=80)
    axis = figure.add_subplot()
    # Fixed margins: tight_layout measured every tick label, a third of the figure's cost.
    figure.subplots_adjust(left=0.14, right=0.97, bottom=0.2, top=0.9)
    # One filled step outline, not a bar per dimension: half the drawing time, the same shape.
    axis.stairs(values, range(len(values) + 1), fill=True, color="tab:blue")
    axis.xaxis.set_major_locator(MaxNLocator(nbins=6, integer=True))
    axis.axhline(ACTIVE_UNIT_THRESHOLD, color="gray", lw=0.8, ls="--")
    axis.set_xlabel("latent dimension (sorted)")
    axis.set_ylabel("KL (nats)")
    return figure


def image_grid(images: Tensor, columns: int, padding: int = 2) -> Tensor:
    """Images (N, C, H, W) tiled into one RGB image, `columns` per row with a black border: what
    torchvision's make_grid draws for two or more images, in torch alone, so that training never
    imports torchvision (a torchvision built for another torch would end every run)."""
    count, channels, height, width = images.shape
    if channels == 1:
        images = images.expand(-1, 3, -1, -1)
    columns = min(columns, count)
    rows = math.ceil(count / columns)
    blank = images.new_zeros(rows * columns - count, 3, height, width)
    cells = torch.nn.functional.pad(torch.cat([images, blank]), (padding, 0, padding, 0))
    cell_height, cell_width = height + padding, width + padding
    grid = cells.view(rows, columns, 3, cell_height, cell_width).permute(2, 0, 3, 1, 4)
    grid = grid.reshape(3, rows * cell_height, columns * cell_width)
    return torch.nn.functional.pad(grid, (0, padding, 0, padding))


def log_images(model: VAE, test_images: Tensor, binarize: bool, tracker: Tracker, step: int,
               count: int = 16) -> None:
    model.eval()
    generator = torch.Generator(test_images.device).manual_seed(0)
    x = to_float(test_images[:count], binarize, generator)
    decoded = model.decode(model.encode(x).mu)
    shape = (-1, *model.image_shape)
    reconstructions = mean_image(model.likelihood_name, decoded.mean_out).view(shape)
    pairs = torch.cat([x.view(shape), reconstructions])  # inputs on top, reconstructions below
    tracker.image("images/reconstructions", image_grid(pairs.float(), count), step)
    z = torch.randn(64, model.latent_dim, device=test_images.device, generator=generator)
    samples = mean_image(model.likelihood_name, model.decode(z).mean_out).view(shape)
    tracker.image("images/samples", image_grid(samples.float(), 8), step)
    model.train()
