"""The stability frontier of a learning-rate sweep: for each setting (every override but seed
and `optim.lr`, so the optimizer is part of it), up to which lr all seeds complete, from which
lr some seed diverges, and the best final ELBO among the fully stable lrs."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from vae_bench.report.runs import Run, as_float, split_override
from vae_bench.report.variants import labels_for

LR_KEY = "optim.lr"
FRONTIER_COLUMNS = ("variant", "max_stable_lr", "min_diverged_lr", "monotone", "best_lr",
                    "best_test_elbo", "seeds")


@dataclass
class LrCell:
    """The runs of one setting at one learning rate."""

    lr: float
    runs: list[Run] = field(default_factory=list)

    @property
    def stable(self) -> bool:
        return bool(self.runs) and all(run.status == "completed" for run in self.runs)

    @property
    def diverged(self) -> int:
        return sum(run.status == "diverged" for run in self.runs)

    @property
    def elbos(self) -> list[float]:
        values = (run.final("test/elbo") for run in self.runs if run.status == "completed")
        return [v for v in values if v is not None]

    @property
    def mean_elbo(self) -> float | None:
        return float(np.mean(self.elbos)) if self.elbos else None


@dataclass
class FrontierRow:
    variant: str
    cells: list[LrCell]  # by increasing lr
    seeds: int

    @property
    def max_stable_lr(self) -> float | None:
        return max((c.lr for c in self.cells if c.stable), default=None)

    @property
    def min_diverged_lr(self) -> float | None:
        return min((c.lr for c in self.cells if c.diverged), default=None)

    @property
    def monotone(self) -> bool:
        """False when some lr had every seed complete above an lr where a seed diverged: then
        "the largest stable lr" is not a threshold, and seeds or luck decide."""
        stable, diverged = self.max_stable_lr, self.min_diverged_lr
        return stable is None or diverged is None or stable < diverged

    @property
    def best(self) -> LrCell | None:
        """The fully stable lr with the best mean final test ELBO."""
        candidates = [c for c in self.cells if c.stable and c.mean_elbo is not None]
        return max(candidates, key=lambda c: c.mean_elbo, default=None)

    def as_dict(self) -> dict:
        best = self.best
        return {"variant": self.variant, "max_stable_lr": self.max_stable_lr,
                "min_diverged_lr": self.min_diverged_lr, "monotone": self.monotone,
                "best_lr": best.lr if best else None,
                "best_test_elbo": best.mean_elbo if best else None, "seeds": self.seeds}


def lr_of(run: Run) -> float | None:
    """The run's learning rate, if the sweep set it by an override."""
    if not any(split_override(item)[0] == LR_KEY for item in run.variant):
        return None
    return as_float(run.config.get(LR_KEY))


def frontier_rows(runs: list[Run]) -> list[FrontierRow]:
    """One row per setting, when the runs vary `optim.lr`; [] otherwise."""
    swept = [run for run in runs if lr_of(run) is not None]
    if len({lr_of(run) for run in swept}) < 2:
        return []
    by_setting: dict[tuple[str, ...], dict[float, LrCell]] = {}
    for run in swept:
        setting = tuple(i for i in run.variant if split_override(i)[0] != LR_KEY)
        lr = lr_of(run)
        by_setting.setdefault(setting, {}).setdefault(lr, LrCell(lr)).runs.append(run)
    settings = sorted(by_setting)
    rows = []
    for setting, label in zip(settings, labels_for(settings)):
        cells = [by_setting[setting][lr] for lr in sorted(by_setting[setting])]
        seeds = len({str(run.seed) for cell in cells for run in cell.runs})
        rows.append(FrontierRow(label, cells, seeds))
    return rows
