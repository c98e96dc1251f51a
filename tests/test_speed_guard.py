"""The trainer's data path stays whole-tensor: no DataLoader, no per-item PIL image or ToTensor,
splits held as uint8 and converted to float one batch at a time. This is what makes the trainer
faster than a pytorch/examples-style loop (scripts/bench.py measures that); this test only checks
the structure, with no timing, so it is fast and load-independent.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path

import PIL.Image
import pytest
import torch
import torchvision
import torchvision.datasets.mnist
import torchvision.transforms
import torchvision.utils
from conftest import TINY, compose_config
from datafiles import write_idx_set

import vae_bench.train as train_module

N_TRAIN, N_TEST, BATCH, EPOCHS = 256, 64, 32, 2


def _forbidden(name: str):
    def raise_instead(*args, **kwargs):
        raise AssertionError(f"the trainer took a per-item data path: {name} was called")

    return raise_instead


def mark_training_pass(monkeypatch, flags: dict) -> None:
    """Set flags["in_epoch"] while the trainer's training pass (train_epoch) runs."""
    real_train_epoch = train_module.train_epoch

    def train_epoch_spy(*args, **kwargs):
        flags["in_epoch"] = True
        try:
            return real_train_epoch(*args, **kwargs)
        finally:
            flags["in_epoch"] = False

    monkeypatch.setattr(train_module, "train_epoch", train_epoch_spy)


@pytest.fixture
def guarded(monkeypatch):
    """Forbid the per-item data path everywhere, and PIL inside the training pass; record the
    Run the trainer builds, the batches it converts, and PIL use outside the training pass."""
    seen: dict = {"runs": [], "batches": [], "pil_calls": 0, "pil_depth": 0,
                  "in_epoch": False}

    for owner, attribute in [
        (torch.utils.data.DataLoader, "__init__"),
        (torch.utils.data.DataLoader, "__iter__"),
        (torchvision.transforms.ToTensor, "__call__"),
        (torchvision.transforms.PILToTensor, "__call__"),
        (torchvision.datasets.MNIST, "__getitem__"),
        (torchvision.datasets.FashionMNIST, "__getitem__"),
        (torchvision.datasets.CIFAR10, "__getitem__"),
    ]:
        monkeypatch.setattr(owner, attribute, _forbidden(f"{owner.__name__}.{attribute}"))

    def pil_guard(original, name):
        def guard(*args, **kwargs):
            # End-of-epoch image grids and figures go through PIL once each: that is allowed.
            # Inside the training pass nothing may build a PIL image.
            if seen["in_epoch"]:
                raise AssertionError(f"the training pass built a PIL image: {name}")
            seen["pil_calls"] += seen["pil_depth"] == 0  # fromarray calls frombuffer: count once
            seen["pil_depth"] += 1
            try:
                return original(*args, **kwargs)
            finally:
                seen["pil_depth"] -= 1

        return guard

    for owner, attribute in [(PIL.Image, "fromarray"), (PIL.Image, "frombuffer"),
                             (torchvision.datasets.mnist, "_Image_fromarray"),
                             (torchvision.utils, "_Image_fromarray")]:
        if hasattr(owner, attribute):
            monkeypatch.setattr(owner, attribute, pil_guard(getattr(owner, attribute),
                                                            f"{owner.__name__}.{attribute}"))

    real_setup, real_to_float = train_module.setup, train_module.to_float

    def setup_spy(*args, **kwargs):
        run = real_setup(*args, **kwargs)
        seen["runs"].append(run)
        return run

    def to_float_spy(batch, *args, **kwargs):
        if seen["in_epoch"]:
            seen["batches"].append((batch.dtype, tuple(batch.shape)))
        return real_to_float(batch, *args, **kwargs)

    monkeypatch.setattr(train_module, "setup", setup_spy)
    mark_training_pass(monkeypatch, seen)
    monkeypatch.setattr(train_module, "to_float", to_float_spy)
    return seen


def _overrides(dataset: str, tmp_path: Path) -> list[str]:
    overrides = [*TINY, f"dataset.num_train={N_TRAIN}", f"dataset.num_test={N_TEST}",
                 f"trainer.batch_size={BATCH}", f"trainer.epochs={EPOCHS}"]
    if dataset == "mnist":  # the IDX reader, on tiny .gz files in the real format
        write_idx_set(tmp_path / "data", n_train=N_TRAIN, n_test=N_TEST, gz=True)
        overrides = [o for o in overrides if not o.startswith("dataset.")]  # synthetic's keys
        overrides += ["dataset=mnist", f"data.root={tmp_path / 'data'}"]
    return overrides


@pytest.mark.parametrize("dataset", ["synthetic", "mnist"])
def test_trainer_uses_whole_uint8_tensors_not_a_per_item_path(dataset, tmp_path, guarded):
    cfg = compose_config(_overrides(dataset, tmp_path))
    assert cfg.log.diagnostics and cfg.log.images  # the default logging path is the one guarded

    summary = train_module.train(cfg, tmp_path / "run", quiet=True)

    assert summary["status"] == "completed"
    assert summary["epoch"] == EPOCHS
    (run,) = guarded["runs"]
    # The splits the trainer holds are the uint8 images, not a float copy.
    assert run.train_images.dtype == torch.uint8
    assert run.test_images.dtype == torch.uint8
    assert tuple(run.train_images.shape) == (N_TRAIN, 1, 28, 28)
    assert tuple(run.test_images.shape) == (N_TEST, 1, 28, 28)
    for field in dataclasses.fields(run):
        value = getattr(run, field.name)
        if isinstance(value, torch.Tensor) and value.numel() >= N_TEST * 28 * 28:
            assert value.dtype == torch.uint8, f"Run.{field.name} holds {value.dtype} images"
    # Every training step converts one uint8 batch, and only that batch.
    steps = EPOCHS * -(-N_TRAIN // BATCH)
    assert len(guarded["batches"]) == steps
    assert all(dtype == torch.uint8 and shape[0] <= BATCH
               for dtype, shape in guarded["batches"])
    # PIL only for the end-of-epoch grids and figure: a few per epoch, never one per example.
    assert guarded["pil_calls"] <= 5 * EPOCHS


def test_guard_catches_a_per_item_loader(guarded):
    """The guard itself works: a pytorch/examples-style loader trips it."""
    images = torch.zeros(4, 1, 28, 28, dtype=torch.uint8)
    dataset = torch.utils.data.TensorDataset(images)
    with pytest.raises(AssertionError, match="per-item data path"):
        torch.utils.data.DataLoader(dataset, batch_size=2)
    with pytest.raises(AssertionError, match="per-item data path"):
        torchvision.transforms.ToTensor()(images[0, 0].numpy())


def test_sweep_jobs_load_their_data_in_child_processes_that_end(tmp_path, monkeypatch) -> None:
    """A launcher worker runs sweep jobs one after another (joblib's loky workers do; here
    Hydra's basic launcher, in this process). Each job trains in a child process that exits
    afterwards, so the worker never holds a job's data set: nothing can accumulate across jobs,
    and the memory of each (data, model, a CUDA context) goes back to the system."""
    import gc
    import socket

    import vae_bench.cli
    from vae_bench import jobs
    from vae_bench.tracking import process_gone

    def image_tensors() -> int:
        gc.collect()
        return sum(type(o) is torch.Tensor and o.dtype == torch.uint8 and o.dim() == 4
                   for o in gc.get_objects())

    loads_here = []
    images_before = image_tensors()
    monkeypatch.setattr(train_module, "load_splits",
                        lambda *args, **kwargs: loads_here.append(args))
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    vae_bench.cli.main(["train", "-m", *TINY, "trainer.epochs=1", "seed=0,1,2",
                        f"hydra.sweep.dir={sweep}"])
    assert loads_here == [], "a sweep job loaded its data in the launcher's process"
    entries = jobs.read_journal(sweep)
    assert sorted(e["job"] for e in entries) == ["seed=0", "seed=1", "seed=2"]
    assert all(e["status"] == "completed" for e in entries)
    pids = {e["pid"] for e in entries}
    assert len(pids) == 3 and os.getpid() not in pids
    # Each child has exited (and was reaped): nothing it held is still allocated.
    assert all(process_gone({"pid": pid, "host": socket.gethostname()}) for pid in pids)
    assert image_tensors() <= images_before, "data tensors left in the launcher's process"


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="the malloc setting is glibc's")
def test_allocator_keeps_freed_blocks_unless_the_user_tuned_it(monkeypatch):
    assert train_module.keep_freed_memory_in_the_heap() is True
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "131072")
    assert train_module.keep_freed_memory_in_the_heap() is False


@pytest.mark.parametrize("choice", ["param=softplus_std", "param=sigmoid_bounded",
                                    "likelihood=gaussian_fixed", "param=logvar"])
def test_training_steps_make_no_tensors_from_host_values(choice, tmp_path, monkeypatch):
    """On a GPU, a tensor made from a Python value (torch.tensor, new_tensor) is a blocking
    host-to-device copy, which waits for the device: one per step would serialise the loop. The
    training pass may make them per epoch (its accumulators), never per step."""
    calls = {"count": 0, "in_epoch": False}

    def counting(original):
        def wrapper(*args, **kwargs):
            calls["count"] += calls["in_epoch"]
            return original(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(torch, "tensor", counting(torch.tensor))
    monkeypatch.setattr(torch.Tensor, "new_tensor", counting(torch.Tensor.new_tensor))
    mark_training_pass(monkeypatch, calls)
    cfg = compose_config([*_overrides("synthetic", tmp_path), choice])
    summary = train_module.train(cfg, tmp_path / "run", quiet=True)
    assert summary["status"] == "completed"
    steps_per_epoch = -(-N_TRAIN // BATCH)
    assert steps_per_epoch >= 8
    assert calls["count"] <= 2 * EPOCHS, f"{calls['count']} host-made tensors in {EPOCHS} epochs"
