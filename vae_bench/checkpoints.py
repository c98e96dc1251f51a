"""Checkpoints that make a resumed run bitwise equal to an uninterrupted one (on the CPU).

A checkpoint holds the model, the optimizer, every RNG state (torch's global ones, the data-order
generator as it was at the start of the current epoch, the binarization generator), the epoch,
the step, the position inside the epoch and whatever the loop accumulates between two log points.
`last.pt` is replaced atomically and the one before it is kept as `previous.pt`, so a corrupt or
half-written file never loses the run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST = "last.pt"
PREVIOUS = "previous.pt"
NEWEST_FIRST = (LAST, PREVIOUS)


class CheckpointError(RuntimeError):
    """No usable checkpoint; the message says which files were tried and why they failed."""


@dataclass
class TrainState:
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken (skipped non-finite steps count too)
    batch_in_epoch: int = 0
    order_state: torch.Tensor | None = None  # data-order generator at the start of this epoch
    examples_per_s: list[float] = field(default_factory=list)  # one per completed epoch
    nonfinite_steps: int = 0
    consecutive_skips: int = 0  # on_nonfinite=skip: the current run of skipped steps
    # The train-scalar window not yet logged when a mid-epoch checkpoint was taken ({"sums":
    # [elbo, recon, kl, examples], "bad_steps": n}): the resumed run logs the same window an
    # uninterrupted one would, instead of an extra partial one.
    window: dict[str, Any] | None = None
    diagnostics: dict[str, Any] = field(default_factory=dict)  # running sums spanning steps
    epoch_seconds: float = 0.0  # of the epoch just trained
    epoch_examples_per_s: float = 0.0
    iwae_seconds: float | None = None
    iwae_final_seconds: float | None = None  # eval.iwae_k_final's estimate
    log_sigma_quantiles: list[float] = field(default_factory=list)  # at the last evaluation
    tracker: dict = field(default_factory=lambda: {"epoch_seconds": []})


def _write_temp(payload: dict, tmp: Path) -> None:
    with open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        os.fsync(handle.fileno())


def save(run_dir: Path, model, optimizer, order_generator: torch.Generator,
         binarize_generator: torch.Generator, state: TrainState, scheduler=None) -> Path:
    """Write `last.pt`, keeping the one it replaces as `previous.pt`.

    The new file is complete on disk before either rename, so a crash while writing leaves
    `last.pt` as it was; a crash between the two renames leaves `previous.pt`, which `load_payload`
    falls back to. `order_generator` is saved through `state.order_state` (its state at the start
    of the epoch), which is what a resumed epoch needs to redraw the same order. `scheduler`, the
    learning-rate schedule (None without one), is saved beside the optimizer.
    """
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "state": asdict(state),
        "cpu_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "binarize_rng": binarize_generator.get_state(),
    }
    last, tmp = folder / LAST, folder / f".{LAST}.tmp"
    _write_temp(payload, tmp)
    if last.exists():
        os.replace(last, folder / PREVIOUS)
    os.replace(tmp, last)
    return last


def exists(run_dir: Path) -> bool:
    """Whether the run folder holds a checkpoint file that `load_payload` would try."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    return any((folder / name).is_file() for name in NEWEST_FIRST)


def load_payload(run_dir: Path) -> tuple[dict, Path]:
    """The newest readable checkpoint; falls back to previous.pt and says so."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    failures = []
    for name in NEWEST_FIRST:
        path = folder / name
        if not path.exists():
            failures.append(f"{path}: missing")
            continue
        try:
            payload = torch.load(path, map_location="cpu", weights_only=False)
            if not isinstance(payload, dict) or "model" not in payload:
                raise ValueError("not a vae-bench checkpoint")
        except Exception as error:  # a truncated or corrupt file must not end the resume
            failures.append(f"{path}: unreadable ({type(error).__name__}: {error})")
            log.warning("checkpoint %s is unreadable (%s); trying the previous one", path, error)
            continue
        if name == PREVIOUS:
            log.warning("resuming from the previous good checkpoint %s (%s)", path,
                        "; ".join(failures))
        return payload, path
    raise CheckpointError("No usable checkpoint in " + str(folder) + ": " + "; ".join(failures)
                          + ". Start a new run with `vae-bench train` instead.")


def restore(run_dir: Path, model, optimizer, order_generator: torch.Generator,
            binarize_generator: torch.Generator, scheduler=None) -> TrainState:
    """Load the newest usable checkpoint into these objects. `scheduler` must be built before
    the optimizer is restored here: building one sets the optimizer's lr to its first value."""
    payload, path = load_payload(run_dir)
    model.load_state_dict(payload["model"])
    optimizer.load_state_dict(payload["optimizer"])
    if scheduler is not None:
        if payload.get("scheduler") is None:
            raise CheckpointError(f"{path} holds no learning-rate schedule state, but this run "
                                  "has one (optim.schedule); it cannot continue bitwise.")
        scheduler.load_state_dict(payload["scheduler"])
    torch.set_rng_state(payload["cpu_rng"])
    if payload["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    binarize_generator.set_state(payload["binarize_rng"])
    state = TrainState(**payload["state"])
    order_generator.set_state(state.order_state)
    return state
