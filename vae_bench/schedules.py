"""Learning-rate schedules (`optim.schedule`): the factor each parameter group's lr is multiplied by
at every optimizer step, as a function of how far training has come.

  none    1 throughout: the lr of the config.
  burda   Burda et al. 2016 (IWAE): lr · 10^(−i/7) for 3^i epochs, i = 0…7, 3,280 epochs in all.
          Scaled to the run's budget, each stage keeps its share of training: step t of
          T = trainer.epochs × steps per epoch belongs to stage i when
              (3^i − 1)/2 ≤ 3280 · t / T < (3^(i+1) − 1)/2,
          so the stage boundaries fall at the fractions 1, 4, 13, 40, 121, 364, 1093 of 3280 of
          training. At trainer.epochs=3280 the stages are Burda's exactly, whole epochs (1, 3,
          9, …, 2187 of them); at 300 epochs the lr steps down at epochs 0.09, 0.37, 1.19, 3.66,
          11.07, 33.29 and 99.97 (within the epoch, at the step the formula gives). A stage
          shorter than one step gets no step at all: below 3,280 steps in all, some early stages
          are skipped. The last step is always in the final stage, lr/10, from 2 steps on.
  cosine  lr · (1 + cos(π t / T)) / 2: lr at the first step, falling to 0 after the last one.

The factor depends only on the step count and T, which the checkpoint holds; the scheduler's own
state (its step counter) is saved beside the optimizer's, so a resumed run takes the same lr at
every step as an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

SCHEDULES = ("none", "burda", "cosine")
BURDA_STAGES = 8  # i = 0…7
BURDA_EPOCHS = (3 ** BURDA_STAGES - 1) // 2  # 3280 = 1 + 3 + 9 + … + 2187


def burda_stage_start(stage: int) -> int:
    """The epoch (of Burda's 3280) at which stage `stage` starts: 1 + 3 + … + 3^(stage−1)."""
    return (3 ** stage - 1) // 2


def burda_stage(step: int, total_steps: int) -> int:
    """The stage of step `step` of `total_steps`; integers only, so boundaries are exact."""
    stage = 0
    while stage + 1 < BURDA_STAGES and \
            burda_stage_start(stage + 1) * total_steps <= BURDA_EPOCHS * step:
        stage += 1
    return stage


def burda_factor(step: int, total_steps: int) -> float:
    return 10.0 ** (-burda_stage(step, total_steps) / 7)


def cosine_factor(step: int, total_steps: int) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


FACTORS: dict[str, Callable[[int, int], float]] = {"burda": burda_factor,
                                                   "cosine": cosine_factor}


def lr_factor(name: str, step: int, total_steps: int) -> float:
    """The multiplier of the configured lr at optimizer step `step` (0-based) of `total_steps`."""
    if name == "none":
        return 1.0
    return FACTORS[name](step, total_steps)


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int
                    ) -> torch.optim.lr_scheduler.LambdaLR | None:
    """A scheduler to step once after every training step (skipped ones too, so that its count
    is the run's step count); None for `none`, which leaves the optimizer exactly as it was."""
    if name == "none":
        return None
    factor = FACTORS[name]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: factor(step, total_steps))
