"""optim.schedule: the lr factor of each schedule, that training applies it to every parameter
group, that a bad value is refused, and that a run resumed across a step of the schedule ends
bitwise equal to an uninterrupted one."""

from __future__ import annotations

import itertools
import json
import math
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from conftest import TINY, compose_config, run_cli

import vae_bench.train as train_module
from vae_bench import checkpoints
from vae_bench.schedules import BURDA_EPOCHS, burda_factor, burda_stage, cosine_factor, lr_factor
from vae_bench.tracking import read_metrics

# Burda et al. 2016: 3^i epochs at lr · 10^(−i/7), i = 0…7. Stage i ends after these epochs.
BURDA_STAGE_ENDS = list(itertools.accumulate(3 ** i for i in range(8)))  # 1, 4, …, 3280
MNIST_STEPS_PER_EPOCH = 469  # 60,000 images in batches of 128


def burda_by_fraction(step: int, total_steps: int) -> int:
    """The stage from the definition, with exact fractions: step t of T is at epoch
    3280·t/T of Burda's schedule."""
    position = Fraction(step, total_steps) * BURDA_STAGE_ENDS[-1]
    return next(stage for stage, end in enumerate(BURDA_STAGE_ENDS) if position < end)


def test_burda_schedule_is_3280_epochs_long() -> None:
    assert BURDA_EPOCHS == BURDA_STAGE_ENDS[-1] == 3280


@pytest.mark.parametrize("total_steps", [1, 2, 3, 7, 100, 3279, 3280, 3281, 10 * 469])
def test_burda_stage_at_every_step_follows_the_cumulative_fractions(total_steps: int) -> None:
    for step in range(total_steps):
        assert burda_stage(step, total_steps) == burda_by_fraction(step, total_steps), step


def test_burda_at_3280_epochs_is_burdas_own_schedule() -> None:
    """The full budget: the lr steps down exactly at the first step of epochs 1, 4, 13, …, 1093
    (counting from 0) and stays constant within every epoch."""
    total = BURDA_EPOCHS * MNIST_STEPS_PER_EPOCH
    starts = [0, *BURDA_STAGE_ENDS[:-1]]  # epochs at which stage i starts
    for stage, epoch in enumerate(starts):
        first_step = epoch * MNIST_STEPS_PER_EPOCH
        assert burda_factor(first_step, total) == 10 ** (-stage / 7)
        assert burda_stage(first_step + MNIST_STEPS_PER_EPOCH - 1, total) == stage
        if stage:
            assert burda_stage(first_step - 1, total) == stage - 1
    assert burda_factor(total - 1, total) == pytest.approx(0.1)


def test_burda_at_300_and_10_epochs() -> None:
    """Scaled budgets: at 300 epochs the stage boundaries fall at 300·(1, 4, 13, …, 1093)/3280
    epochs, the last one inside epoch 100; at 10 epochs all seven inside epoch 4."""
    total = 300 * MNIST_STEPS_PER_EPOCH  # 140,700 steps
    assert burda_stage(0, total) == 0
    assert burda_stage(1 * MNIST_STEPS_PER_EPOCH, total) == 2  # stage 2: epochs 0.37 to 1.19
    assert burda_stage(34 * MNIST_STEPS_PER_EPOCH, total) == 6  # after epoch 33.29
    assert burda_stage(99 * MNIST_STEPS_PER_EPOCH, total) == 6  # epoch 99.97 not reached yet
    assert burda_stage(100 * MNIST_STEPS_PER_EPOCH, total) == 7
    # step 46,886 is the first at or past 1093/3280 of 140,700 = 46,885.7
    assert [burda_stage(step, total) for step in (46885, 46886)] == [6, 7]
    assert burda_factor(total - 1, total) == pytest.approx(0.1)
    ten = 10 * MNIST_STEPS_PER_EPOCH
    assert burda_stage(4 * MNIST_STEPS_PER_EPOCH, ten) == 7  # 10·1093/3280 = 3.33 epochs


def test_burda_at_tiny_budgets_skips_stages_shorter_than_a_step() -> None:
    assert [burda_stage(step, 1) for step in range(1)] == [0]
    assert [burda_stage(step, 2) for step in range(2)] == [0, 7]
    assert [burda_stage(step, 10) for step in range(10)] == [0, 5, 6, 6, 7, 7, 7, 7, 7, 7]


def test_cosine_endpoints_and_shape() -> None:
    total = 1000
    assert cosine_factor(0, total) == 1.0
    assert cosine_factor(total // 2, total) == pytest.approx(0.5)
    assert cosine_factor(total, total) == pytest.approx(0.0, abs=1e-15)
    factors = [cosine_factor(step, total) for step in range(total + 1)]
    assert all(a > b for a, b in zip(factors, factors[1:]))


def test_none_is_one_everywhere() -> None:
    assert {lr_factor("none", step, 10) for step in range(10)} == {1.0}


# ---- training applies it ------------------------------------------------------------------------

# 256 examples in batches of 32: 8 steps per epoch, 4 epochs, 32 steps. The last burda stage
# starts at step ⌈32·1093/3280⌉ = 11, inside epoch 2 (steps 8–15).
SCHEDULED = [*TINY, "trainer.epochs=4", "log.every_steps=1", "optim.sigma_head_lr_mult=0.5"]
TOTAL_STEPS = 32
LAST_STAGE_STEP = 11


@pytest.mark.parametrize("schedule", ["burda", "cosine"])
def test_training_sets_the_scheduled_lr_of_every_parameter_group(tmp_path: Path,
                                                                 schedule: str) -> None:
    cfg = compose_config([*SCHEDULED, f"optim.schedule={schedule}"])
    run = train_module.setup(cfg, tmp_path, resume=False)
    with train_module.StopRequest() as stop_request:
        for _ in range(cfg.trainer.epochs):
            assert train_module.train_epoch(run, stop_request, quiet=True)["status"] == "completed"
            factor = lr_factor(schedule, run.state.step, TOTAL_STEPS)  # of the next step
            groups = run.optimizer.param_groups
            assert groups[0]["lr"] == pytest.approx(cfg.optim.lr * factor, rel=1e-12)
            assert groups[1]["lr"] == pytest.approx(cfg.optim.lr * 0.5 * factor, rel=1e-12)
            assert train_module.end_epoch(run, quiet=True)["status"] == "completed"
    run.tracker.close()
    logged = {r["step"]: r["train/lr"] for r in read_metrics(tmp_path) if "train/lr" in r}
    assert sorted(logged) == list(range(1, TOTAL_STEPS + 1))
    for step, lr in logged.items():  # the lr the step ending at `step` took
        assert lr == pytest.approx(cfg.optim.lr * lr_factor(schedule, step - 1, TOTAL_STEPS))


def test_no_schedule_keeps_the_configured_lr_and_logs_none(tmp_path: Path) -> None:
    cfg = compose_config([*SCHEDULED, "trainer.epochs=1"])
    run = train_module.setup(cfg, tmp_path, resume=False)
    assert run.scheduler is None
    with train_module.StopRequest() as stop_request:
        train_module.train_epoch(run, stop_request, quiet=True)
    assert [g["lr"] for g in run.optimizer.param_groups] == [cfg.optim.lr, cfg.optim.lr * 0.5]
    run.tracker.close()
    assert not any("train/lr" in r for r in read_metrics(tmp_path))


def test_an_unknown_schedule_is_refused_in_one_line(tmp_path: Path) -> None:
    result = run_cli(["train", "dataset=synthetic", "optim.schedule=step",
                      f"hydra.run.dir={tmp_path / 'run'}"], tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "optim.schedule='step' is not one of: none, burda, cosine" in lines[0]
    assert not (tmp_path / "run").exists()


# ---- resume across a step of the schedule -------------------------------------------------------

TIMINGS = {"train/epoch_seconds", "train/epoch_seconds_all", "train/examples_per_s",
           "eval/iwae_seconds"}


def stop_after(monkeypatch, step: int) -> None:
    """Make the next `train` stop as SIGTERM would, once `step` steps are taken."""
    runs = []
    real_setup = train_module.setup

    def setup(*args, **kwargs):
        runs.append(real_setup(*args, **kwargs))
        return runs[-1]

    class StopAtStep(train_module.StopRequest):
        @property
        def signal_name(self):
            return "SIGTERM" if runs and runs[-1].state.step >= step else None

        @signal_name.setter
        def signal_name(self, value):  # __init__ and the handler set it; the step decides
            pass

    monkeypatch.setattr(train_module, "setup", setup)
    monkeypatch.setattr(train_module, "StopRequest", StopAtStep)


def metric_values(run_dir: Path) -> dict:
    return {(r["step"], tag): value for r in read_metrics(run_dir) for tag, value in r.items()
            if tag not in TIMINGS | {"step", "epoch"}}


@pytest.mark.parametrize("schedule", ["burda", "cosine"])
def test_resume_across_a_schedule_step_is_bitwise_equal(tmp_path: Path, monkeypatch,
                                                         schedule: str) -> None:
    cfg = compose_config([*SCHEDULED, f"optim.schedule={schedule}", "log.every_steps=3"])
    uninterrupted = train_module.train(cfg, tmp_path / "uninterrupted", quiet=True)

    stopped_at = LAST_STAGE_STEP - 1  # checkpointed one step before the lr steps down
    with monkeypatch.context() as patch:
        stop_after(patch, stopped_at)
        interrupted = train_module.train(cfg, tmp_path / "resumed", quiet=True)
    assert interrupted["status"] == "interrupted"
    payload, _ = checkpoints.load_payload(tmp_path / "resumed")
    assert payload["state"]["step"] == stopped_at
    assert payload["scheduler"]["last_epoch"] == stopped_at
    if schedule == "burda":  # the checkpoint holds the lr of stage 6, the next step takes 7's
        assert payload["optimizer"]["param_groups"][0]["lr"] == cfg.optim.lr * 10 ** (-6 / 7)
        assert burda_stage(stopped_at, TOTAL_STEPS) == 6
        assert burda_stage(stopped_at + 1, TOTAL_STEPS) == 7

    resumed = train_module.train(cfg, tmp_path / "resumed", resume=True, quiet=True)
    assert resumed["status"] == "completed"
    differing = {k for k in uninterrupted if k not in TIMINGS and resumed[k] != uninterrupted[k]}
    assert not differing, {k: (uninterrupted[k], resumed[k]) for k in differing}
    assert metric_values(tmp_path / "resumed") == metric_values(tmp_path / "uninterrupted")
    final = {name: checkpoints.load_payload(tmp_path / name)[0]
             for name in ("uninterrupted", "resumed")}
    for key, tensor in final["uninterrupted"]["model"].items():
        assert torch.equal(final["resumed"]["model"][key], tensor), key
    assert final["resumed"]["scheduler"] == final["uninterrupted"]["scheduler"]
    assert final["resumed"]["optimizer"]["param_groups"] == \
        final["uninterrupted"]["optimizer"]["param_groups"]
    lr = json.loads((tmp_path / "resumed" / "summary.json").read_text())["train/lr"]
    assert lr == cfg.optim.lr * lr_factor(schedule, TOTAL_STEPS - 1, TOTAL_STEPS)
    assert math.isfinite(resumed["test/elbo"])


def test_resume_refuses_a_checkpoint_without_the_schedule_state(tmp_path: Path) -> None:
    cfg = compose_config([*SCHEDULED, "trainer.epochs=1"])
    train_module.train(cfg, tmp_path, quiet=True)  # no schedule: scheduler state None
    scheduled = compose_config([*SCHEDULED, "trainer.epochs=2", "optim.schedule=cosine"])
    with pytest.raises(checkpoints.CheckpointError, match="no learning-rate schedule state"):
        train_module.setup(scheduled, tmp_path, resume=True)
