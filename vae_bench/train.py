"""The training loop: epochs, evaluation, checkpoints, resume, divergence and interrupts.

`train(cfg, run_dir)` is independent of Hydra: the CLI composes and checks the config, this
module runs it. A run folder is the unit of truth; see tracking.py for what it holds.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import signal
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from vae_bench import checkpoints
from vae_bench.config import data_root, pick_device
from vae_bench.data import dataset_label, load_splits, to_float
from vae_bench.diagnostics import (
    Diagnostics,
    latent_usage,
    log_sigma_quantiles,
    sigma_percentile_scalars,
)
from vae_bench.estimators import ElboTerms, elbo_terms, evaluate, evaluate_iwae
from vae_bench.hparams import HPARAM_METRICS, hparams_row, varied_hparams
from vae_bench.likelihoods import CONTINUOUS_LIKELIHOODS
from vae_bench.models import VAE
from vae_bench.objectives import bits_per_dim
from vae_bench.schedules import build_scheduler, lr_factor
from vae_bench.tracking import Tracker

log = logging.getLogger(__name__)

TRAIN_TAGS = ("train/elbo", "train/recon_nll", "train/kl")
# (sample, example) pairs decoded at once. 4096 MNIST rows make 13 MB tensors, which glibc
# serves from its heap; 32768 rows (103 MB) went to fresh mmaps and page-faulted on every block,
# a sixth slower. Any k fits in memory: samples come `eval.iwae_chunk` at a time.
IWAE_ROWS = 4096


def show_bars(quiet: bool) -> bool:
    """Progress bars only on a terminal: redirected to a file, each redraw would be one more
    carriage-return line in it (290 KB for one run); there the epoch lines say enough."""
    return not quiet and sys.stderr.isatty()


def synthetic_sizes(dataset: DictConfig) -> dict[str, int]:
    """The `synthetic_*` arguments of load_splits; only dataset=synthetic has these keys."""
    keys = ("num_train", "num_test", "image_size", "channels")
    return {f"synthetic_{key}": dataset[key] for key in keys if key in dataset}


def bound_gpu_memory(fraction: float | None, device: torch.device) -> None:
    """Cap this process's share of the GPU's memory, so that several jobs of a sweep can share
    one GPU without one of them taking the memory the others need."""
    if fraction is None:
        return
    if device.type != "cuda":
        log.info("trainer.gpu_memory_fraction=%s ignored: the device is %s", fraction, device)
        return
    torch.cuda.set_per_process_memory_fraction(fraction, device)


def build_optimizer(cfg: DictConfig, model: VAE) -> torch.optim.Optimizer:
    sigma_head = list(model.encoder_sigma_head.parameters())
    others = [p for p in model.parameters() if all(p is not q for q in sigma_head)]
    groups = [{"params": others, "lr": cfg.lr},
              {"params": sigma_head, "lr": cfg.lr * cfg.sigma_head_lr_mult}]
    if cfg.name == "adam":
        # The fused kernel updates all parameters in one pass; on the CPU the default per-tensor
        # loop took a seventh of an MNIST MLP step (scripts/bench.py). Other devices keep the
        # default implementation, which every device supports.
        fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
        return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                                weight_decay=cfg.weight_decay, fused=fused)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop stops after the current step and checkpoints."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (some launchers): keep the defaults
                pass
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class Run:
    """Everything one training run holds; checkpoints save and restore its state."""

    cfg: DictConfig
    run_dir: Path
    device: torch.device
    train_images: torch.Tensor
    test_images: torch.Tensor
    model: VAE
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None  # None: optim.schedule=none
    order_generator: torch.Generator  # data order, on the CPU
    binarize_generator: torch.Generator
    tracker: Tracker
    diagnostics: Diagnostics | None
    state: checkpoints.TrainState
    steps_per_epoch: int
    step_terms: Callable[[VAE, torch.Tensor], ElboTerms]
    data_label: str  # what results are labelled with, e.g. "CIFAR-10 (JPEG re-encoding)"

    def save_checkpoint(self) -> None:
        self.state.tracker = self.tracker.state()
        if self.diagnostics:
            self.state.diagnostics = self.diagnostics.state()
        checkpoints.save(self.run_dir, self.model, self.optimizer, self.order_generator,
                         self.binarize_generator, self.state, self.scheduler)


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory_in_the_heap() -> bool:
    """Stop glibc from handing freed blocks of a few MB back to the kernel after every use.

    Evaluation allocates and frees tensors of tens of MB in a loop; by default glibc maps each
    anew (or trims the heap after it), so every block page-faults afresh: IWAE k=1000 on the MNIST
    test set took 15M page faults and 34 s of kernel time. A fixed 32 MB mmap threshold keeps such
    blocks in the heap, and a 1 GB trim threshold keeps the heap; it costs ~70 MB of RSS.
    Process-wide; skipped where the user set glibc's MALLOC_* variables, or libc is not glibc.
    Returns whether it applied the setting."""
    if any(key in os.environ for key in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # macOS, Windows, musl: their allocators differ
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


def memory_format(cfg: DictConfig) -> torch.memory_format:
    """The layout of the model's 4-D weights (and so of its convolutions): `trainer.channels_last`
    picks NHWC; inputs follow the weights inside each convolution."""
    return torch.channels_last if cfg.trainer.channels_last else torch.contiguous_format


def compiled_step_terms(cfg: DictConfig) -> Callable[[VAE, torch.Tensor], ElboTerms]:
    if not cfg.trainer.compile:
        return elbo_terms
    # Static shapes: the last, smaller batch of an epoch gets a graph of its own. Dynamic
    # shapes would trace torch.randn with a symbolic size, which torch rejects.
    return torch.compile(elbo_terms, dynamic=False)


def setup(cfg: DictConfig, run_dir: Path, resume: bool, start_over: bool = False) -> Run:
    keep_freed_memory_in_the_heap()
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    device = pick_device(cfg.trainer.device)
    bound_gpu_memory(cfg.trainer.gpu_memory_fraction, device)
    log.info("device %s, %d CPU threads", device, torch.get_num_threads())
    torch.manual_seed(cfg.seed)
    splits = load_splits(cfg.dataset.name, data_root(cfg), cfg.data.download,
                         **synthetic_sizes(cfg.dataset), synthetic_seed=cfg.seed)
    data_label = dataset_label(cfg.dataset.name, data_root(cfg))
    log.info("data: %s, %d train and %d test images", data_label, len(splits.train),
             len(splits.test))
    model = VAE(cfg, splits.image_shape).to(device, memory_format=memory_format(cfg))
    optimizer = build_optimizer(cfg.optim, model)
    steps_per_epoch = math.ceil(len(splits.train) / cfg.trainer.batch_size)
    if cfg.trainer.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, cfg.trainer.max_steps_per_epoch)
    # Before the restore: the optimizer's saved state then sets the lr it had at the checkpoint.
    scheduler = build_scheduler(cfg.optim.schedule, optimizer,
                                cfg.trainer.epochs * steps_per_epoch)
    order_generator = torch.Generator().manual_seed(cfg.seed)
    binarize_generator = torch.Generator(device).manual_seed(cfg.seed + 1)
    state = checkpoints.TrainState()
    purge_step = keep_records = None
    if resume:
        state = checkpoints.restore(run_dir, model, optimizer, order_generator,
                                    binarize_generator, scheduler)
        purge_step, keep_records = state.step + 1, state.tracker.get("metrics_records")
    elif start_over:  # an earlier attempt logged but never checkpointed: drop all it logged
        purge_step, keep_records = 0, 0
    tracker = Tracker(run_dir, purge_step=purge_step, keep_records=keep_records)
    if resume:
        tracker.load_state(state.tracker)
        resumed = (f"resumed from step {state.step} (epoch {state.epoch} of "
                   f"{cfg.trainer.epochs} completed)")
        tracker.text("events", resumed, state.step)
        log.info("%s: %s", run_dir, resumed)
    diagnostics = Diagnostics(model, cfg.log, tracker) if cfg.log.diagnostics else None
    if diagnostics and resume:
        diagnostics.load_state(state.diagnostics, device)
    if diagnostics and not resume:
        diagnostics.write_layout()
    return Run(cfg, run_dir, device, splits.train.to(device), splits.test.to(device), model,
               optimizer, scheduler, order_generator, binarize_generator, tracker, diagnostics,
               state, steps_per_epoch, compiled_step_terms(cfg), data_label)


def train(cfg: DictConfig, run_dir: Path, resume: bool = False, quiet: bool = False,
          start_over: bool = False) -> dict:
    """Train one run into `run_dir` and return its summary (also written to summary.json)."""
    run = setup(cfg, Path(run_dir), resume, start_over)
    run.tracker.write_summary("running", step=run.state.step, epoch=run.state.epoch)
    outcome: dict = {"status": "completed"}
    try:
        with StopRequest() as stop_request:
            while run.state.epoch < cfg.trainer.epochs:
                outcome = train_epoch(run, stop_request, quiet)
                if outcome["status"] == "completed":
                    outcome = end_epoch(run, quiet)
                if outcome["status"] != "completed":
                    break
    except Exception as error:  # keep what was written, and say why the run ended
        outcome = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
        finish(run, outcome)
        raise
    return finish(run, outcome)


def train_epoch(run: Run, stop_request: StopRequest, quiet: bool) -> dict:
    """One pass over the shuffled training split; returns the run's status afterwards."""
    cfg, state, model, diagnostics = run.cfg, run.state, run.model, run.diagnostics
    batch_size = cfg.trainer.batch_size
    skip_nonfinite = cfg.trainer.on_nonfinite == "skip"
    autocast = torch.autocast(run.device.type, dtype=torch.bfloat16,
                              enabled=cfg.trainer.precision == "bf16")
    # Device-side accumulators: the host reads them only at log time. A mid-epoch checkpoint
    # carries the window that was not logged yet.
    carried = state.window or {"sums": [0.0] * 4, "bad_steps": 0}
    state.window = None
    window = torch.tensor(carried["sums"], device=run.device,
                          dtype=torch.float64)  # elbo, recon, kl, count
    bad_steps = torch.tensor(carried["bad_steps"], device=run.device, dtype=torch.int64)
    first_bad_step = torch.full((), -1, device=run.device, dtype=torch.int64)

    def log_window() -> None:
        elbo, recon_nll, kl, count = window.tolist()
        if not count and not bad_steps.item():
            return  # no step since the last log (an epoch ending on a log step): no duplicates
        if count:
            means = dict(zip(TRAIN_TAGS, (elbo / count, recon_nll / count, kl / count),
                             strict=True))
            if run.scheduler:  # the lr of the window's last step
                means["train/lr"] = cfg.optim.lr * lr_factor(
                    cfg.optim.schedule, state.step - 1, cfg.trainer.epochs * run.steps_per_epoch)
            run.tracker.scalars(means, state.step, state.epoch + 1)
        window.zero_()
        state.nonfinite_steps += int(bad_steps.item())
        bad_steps.zero_()
        run.tracker.scalars({"health/nonfinite_steps": state.nonfinite_steps}, state.step,
                            state.epoch + 1)
        if diagnostics:
            diagnostics.flush(state.epoch + 1)

    epoch_start = time.perf_counter()
    state.order_state = run.order_generator.get_state()
    order = torch.randperm(len(run.train_images), generator=run.order_generator).to(run.device)
    first_batch = state.batch_in_epoch
    bar = tqdm(total=run.steps_per_epoch, initial=first_batch, leave=False,
               disable=not show_bars(quiet), desc=f"epoch {state.epoch + 1}/{cfg.trainer.epochs}",
               dynamic_ncols=True)
    status = {"status": "completed"}
    while state.batch_in_epoch < run.steps_per_epoch:
        index = order[state.batch_in_epoch * batch_size:(state.batch_in_epoch + 1) * batch_size]
        x = to_float(run.train_images[index], cfg.dataset.binarize, run.binarize_generator)
        with autocast:
            terms = run.step_terms(model, x)
        recon_nll, kl = terms.recon_nll.float(), terms.kl.float()
        loss = (recon_nll + kl).mean()
        run.optimizer.zero_grad(set_to_none=True)
        if diagnostics:
            diagnostics.before_backward(state.step, terms.posterior)
        loss.backward()
        # The norm also serves the non-finite check; scaling by a coefficient of 1 when
        # clipping is off would be a wasted pass over every gradient.
        grad_norm = torch.nn.utils.get_total_norm(p.grad for p in model.parameters()
                                                  if p.grad is not None)
        if cfg.optim.grad_clip:
            torch.nn.utils.clip_grads_with_norm_(model.parameters(), cfg.optim.grad_clip,
                                                 grad_norm)
        step_bad = ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        bad_steps += step_bad
        first_bad_step = torch.where(step_bad & (first_bad_step < 0), state.step, first_bad_step)
        state.step += 1
        state.batch_in_epoch += 1
        bar.update()
        if skip_nonfinite and step_bad:  # deciding per step needs the flag on the host
            state.consecutive_skips += 1  # kept in the state: a run of skips spans epochs
            if state.consecutive_skips >= cfg.trainer.max_skips:
                status = {"status": "diverged",
                          "diverged_step": state.step - state.consecutive_skips,
                          "reason": f"{state.consecutive_skips} consecutive non-finite steps "
                                    "skipped"}
                break
        else:  # a skipped step still reaches the log and stop-request checks below
            state.consecutive_skips = 0
            if diagnostics:
                diagnostics.after_backward(state.step - 1, grad_norm)
            run.optimizer.step()
            if diagnostics:
                diagnostics.after_step(state.step - 1)
            # torch.full fills on the device; new_tensor(len) would copy from the host, and a
            # blocking host-to-device copy waits for the GPU on every step.
            count = torch.full((), len(index), device=run.device, dtype=recon_nll.dtype)
            window += torch.stack([-(recon_nll + kl).sum(), recon_nll.sum(), kl.sum(),
                                   count]).detach().double()
        if run.scheduler:  # skipped steps count too: the schedule follows state.step
            run.scheduler.step()
        log_due = state.step % cfg.log.every_steps == 0
        # Stop mode also reads the flag before anything is logged or checkpointed, so that
        # neither ever holds a value from after the blow-up.
        check_due = (state.step % cfg.trainer.check_every == 0 or log_due
                     or stop_request.signal_name)
        if not skip_nonfinite and check_due and first_bad_step >= 0:
            status = {"status": "diverged", "diverged_step": int(first_bad_step)}
            break
        if log_due:
            log_window()
        if stop_request.signal_name:
            status = {"status": "interrupted", "signal": stop_request.signal_name}
            break
    bar.close()
    if status["status"] == "completed" and not skip_nonfinite and first_bad_step >= 0:
        status = {"status": "diverged", "diverged_step": int(first_bad_step)}
    if status["status"] == "diverged":
        # The window and the pending diagnostics saw the blow-up: keep the last finite values.
        state.nonfinite_steps += int(bad_steps.item())
        run.tracker.scalars({"health/nonfinite_steps": state.nonfinite_steps}, state.step,
                            state.epoch + 1)
        if diagnostics:
            diagnostics.pending.clear()
        status["diverged_epoch"] = state.epoch + 1
        return status
    if status["status"] == "interrupted":
        # The unlogged window goes into the checkpoint instead of being logged early, so the
        # resumed run logs exactly the values an uninterrupted one would.
        state.window = {"sums": window.tolist(), "bad_steps": int(bad_steps.item())}
        if diagnostics:
            diagnostics.flush(state.epoch + 1)  # each value at its own step: same records
        run.save_checkpoint()
        return status
    log_window()
    examples = (state.batch_in_epoch - first_batch) * batch_size
    state.epoch_seconds = time.perf_counter() - epoch_start
    state.epoch_examples_per_s = min(examples, len(run.train_images)) / state.epoch_seconds
    return status


def end_epoch(run: Run, quiet: bool = False) -> dict:
    """Evaluate on the test split (sampled z), log, and checkpoint; returns the run's status.
    Unless `quiet`, progress bars show the evaluations (IWAE with k=1000 takes minutes)."""
    cfg, state = run.cfg, run.state
    state.epoch += 1
    state.batch_in_epoch = 0
    state.order_state = run.order_generator.get_state()
    state.examples_per_s.append(state.epoch_examples_per_s)
    run.tracker.epoch_seconds.append(state.epoch_seconds)
    eval_generator = torch.Generator(run.device).manual_seed(cfg.seed + 2)
    results = evaluate(run.model, run.test_images, cfg.eval.batch_size, cfg.dataset.binarize,
                       eval_generator, progress=show_bars(quiet))
    scalars = {tag: results[tag].item() for tag in ("test/elbo", "test/recon_nll", "test/kl")}
    scalars["train/epoch_seconds"] = state.epoch_seconds
    scalars["train/examples_per_s"] = state.epoch_examples_per_s
    last_epoch = state.epoch == cfg.trainer.epochs
    if last_epoch or iwae_due(cfg.eval.iwae_every, state.epoch):
        scalars["test/nll_iwae"] = iwae_nll(run, quiet)
    if last_epoch and cfg.eval.iwae_k_final:
        scalars["test/nll_iwae_final"] = iwae_nll(run, quiet, final=True)
    scalars.update(bits_per_dim_scalars(run, scalars))
    if not all(math.isfinite(value) for value in scalars.values()):
        # Finite steps can still leave a model whose test metrics overflow (SGD at lr=1 does):
        # a divergence too, and its values must not replace the last finite ones.
        state.epoch -= 1  # not completed: as in train_epoch, `epoch` counts completed epochs
        return {"status": "diverged", "diverged_step": state.step,
                "diverged_epoch": state.epoch + 1,
                "reason": "non-finite test metrics after the last update"}
    if run.diagnostics:
        scalars.update(latent_usage(results, run.tracker, state.step, run.model,
                                    run.test_images, cfg.dataset.binarize, cfg.log.images))
        state.log_sigma_quantiles = log_sigma_quantiles(results)
        scalars.update(sigma_percentile_scalars(state.log_sigma_quantiles))
    run.tracker.scalars(scalars, state.step, state.epoch)
    log.info(epoch_line(state.epoch, cfg.trainer.epochs, scalars))
    run.save_checkpoint()
    run.tracker.write_summary("running", step=state.step, epoch=state.epoch,
                              **{"train/examples_per_s": statistics.median(state.examples_per_s)})
    return {"status": "completed"}


def bits_per_dim_scalars(run: Run, scalars: dict) -> dict:
    """test/bpd from the test ELBO (a bound), test/bpd_iwae from the IWAE estimate."""
    dims = run.test_images[0].numel()
    continuous = run.cfg.likelihood.name in CONTINUOUS_LIKELIHOODS
    bpd = {"test/bpd": bits_per_dim(-scalars["test/elbo"], dims, continuous)}
    if "test/nll_iwae" in scalars:
        bpd["test/bpd_iwae"] = bits_per_dim(scalars["test/nll_iwae"], dims, continuous)
    return bpd


def iwae_due(every: int | list[int], epoch: int) -> bool:
    """`eval.iwae_every`: an interval in epochs (0: none but the last), or a list of epochs."""
    if isinstance(every, int):
        return every > 0 and epoch % every == 0
    return epoch in every


def iwae_nll(run: Run, quiet: bool = False, final: bool = False) -> float:
    """IWAE NLL with k = eval.iwae_k, or with eval.iwae_k_final and its own samples (`final`)."""
    cfg = run.cfg
    k = cfg.eval.iwae_k_final if final else cfg.eval.iwae_k
    images = run.test_images[:cfg.eval.iwae_max_examples or None]
    generator = torch.Generator(run.device).manual_seed(cfg.seed + (4 if final else 3))
    rows = max(1, IWAE_ROWS // min(cfg.eval.iwae_chunk, k))
    start = time.perf_counter()
    value = evaluate_iwae(run.model, images, rows, cfg.dataset.binarize, k,
                          cfg.eval.iwae_chunk, generator, progress=show_bars(quiet)).item()
    seconds = time.perf_counter() - start
    if final:
        run.state.iwae_final_seconds = seconds
    else:
        run.state.iwae_seconds = seconds
    return value


def finish(run: Run, outcome: dict) -> dict:
    """Write the end of the run: event text, hparams entry, summary.json."""
    status, state, tracker = outcome["status"], run.state, run.tracker
    if status == "diverged":
        cause = outcome.get("reason", "non-finite loss or gradients")
        message = (f"diverged: {cause} at step {outcome['diverged_step']} "
                   f"(epoch {outcome['diverged_epoch']}); the metrics kept are the last finite "
                   "ones")
    elif status == "interrupted":
        message = (f"interrupted by {outcome['signal']} at step {state.step}; continue with "
                   f"`vae-bench resume {run.run_dir}`")
    elif status == "failed":
        message = f"failed at step {state.step}: {outcome['error']}"
    else:
        message = None
    if message:
        tracker.text("events", message, state.step)
        log.warning(message)
    if status in ("completed", "diverged"):
        # TensorBoard keeps the first HParams row a run folder holds: one written at an
        # interrupt or crash would still say so after the run is resumed and completes.
        tracker.hparams(hparams_row(run.cfg, run.run_dir, status), HPARAM_METRICS,
                        varied_hparams(run.run_dir))
    fields = {"step": state.step, "epoch": state.epoch, "data/label": run.data_label,
              "eval/iwae_k": run.cfg.eval.iwae_k,
              "train/threads": torch.get_num_threads(),
              **{k: v for k, v in outcome.items() if k != "status"}}
    if state.examples_per_s:
        fields["train/examples_per_s"] = statistics.median(state.examples_per_s)
    if state.log_sigma_quantiles:
        fields["posterior/test_log_sigma_percentiles"] = state.log_sigma_quantiles
    if state.iwae_seconds is not None:
        fields["eval/iwae_seconds"] = state.iwae_seconds
    if run.cfg.eval.iwae_k_final:
        fields["eval/iwae_k_final"] = run.cfg.eval.iwae_k_final
    if state.iwae_final_seconds is not None:
        fields["eval/iwae_final_seconds"] = state.iwae_final_seconds
    summary = tracker.write_summary(status, **fields)
    tracker.close()
    return summary


def epoch_line(epoch: int, epochs: int, scalars: dict) -> str:
    parts = [f"epoch {epoch}/{epochs}", f"test/elbo {scalars['test/elbo']:.2f}",
             f"recon {scalars['test/recon_nll']:.2f}", f"kl {scalars['test/kl']:.2f}"]
    if "test/nll_iwae" in scalars:
        parts.append(f"nll_iwae {scalars['test/nll_iwae']:.2f}")
    if "latent/active_units" in scalars:
        parts.append(f"active {scalars['latent/active_units']:.0f}")
    parts.append(f"{scalars['train/epoch_seconds']:.1f}s")
    parts.append(f"{scalars['train/examples_per_s']:.0f} ex/s")
    return " | ".join(parts)

