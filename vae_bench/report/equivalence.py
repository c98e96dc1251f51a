"""logvar/logstd equivalence: which σ-head knobs make logstd the same model as logvar, and
whether the runs bear it out (each logstd run against the logvar run of the same seed)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from vae_bench.report.runs import Run, as_float, comparable_config, epoch_curve

# Config keys that turn logstd into logvar (see ModelConfig/OptimConfig); the equivalence check
# pairs runs whose configs agree on everything else.
SIGMA_HEAD_KEYS = ("model.sigma_head_scale", "model.sigma_head_init_scale",
                   "optim.sigma_head_lr_mult")
# What the objective computes; diagnostics such as grad/norm_sigma_head legitimately differ by a
# constant factor between logvar and an equivalent logstd, so they are not part of "bitwise".
OBJECTIVE_TAGS = ("train/elbo", "train/recon_nll", "train/kl", "test/elbo", "test/recon_nll",
                  "test/kl", "test/nll_iwae", "latent/active_units")

def expected_equivalence(config: dict) -> str:
    """Whether a logstd run's σ-head knobs make it the same model and updates as logvar.

    logstd gives log σ² = 2·scale·h with h = W'x + b'; logvar gives log σ² = Wx + b. Let
    k = 2·scale. Equal at step 0 needs k·init_scale = 1 (same seed, same initial W). SGD moves
    W' by lr·mult·k·g, hence k·W' by k²·mult·lr·g: equal updates need k²·mult = 1. Adam's step
    ignores the gradient's scale (up to ε), so it needs k·mult = 1.
    """
    scale = float(config.get("model.sigma_head_scale", 1.0))
    init = float(config.get("model.sigma_head_init_scale", 1.0))
    mult = float(config.get("optim.sigma_head_lr_mult", 1.0))
    k = 2.0 * scale
    if not math.isclose(k * init, 1.0):
        return "no (different function at initialisation)"
    if math.isclose(k, 1.0) and math.isclose(mult, 1.0):
        return "yes, exactly (same parameters, same updates)"
    if float(config.get("optim.weight_decay", 0.0) or 0.0) or config.get("optim.grad_clip"):
        return "no (weight decay or gradient clipping see the rescaled weights)"
    optimizer = config.get("optim.name")
    if optimizer == "sgd" and math.isclose(k * k * mult, 1.0):
        return "yes, exactly under SGD"
    if optimizer == "adam" and math.isclose(k * mult, 1.0):
        return "yes, up to Adam's ε"
    return "no (the σ-head learning rate does not match)"


def tagged_values(run: Run, tags: Sequence[str]) -> dict[tuple[str, int], object]:
    values = {}
    for record in run.records():
        for tag in tags:
            if tag in record:
                values[(tag, int(record["step"]))] = record[tag]
    return values


@dataclass
class EquivalenceRow:
    logstd: Run
    logvar: Run
    expected: str
    max_abs_elbo: float | None
    epochs: int
    bitwise: bool
    first_difference: str | None


def equivalence_rows(runs: list[Run]) -> list[EquivalenceRow]:
    """Each logstd run against the logvar run with the same seed and otherwise the same config
    (the σ-head knobs and param options aside)."""
    def partner_key(run: Run):
        config = comparable_config(run.config, SIGMA_HEAD_KEYS)
        config = {k: v for k, v in config.items() if not k.startswith("param.")}
        return str(run.seed), json.dumps(config, sort_keys=True, default=str)

    logvar_runs = {}
    for run in runs:
        if run.config.get("param.name") == "logvar":
            logvar_runs.setdefault(partner_key(run), run)
    rows = []
    for run in runs:
        if run.config.get("param.name") != "logstd":
            continue
        partner = logvar_runs.get(partner_key(run))
        if partner is None:
            continue
        mine, theirs = epoch_curve(run), epoch_curve(partner)
        common = sorted(set(mine) & set(theirs))
        max_abs = max((abs(mine[e] - theirs[e]) for e in common), default=None)
        a, b = tagged_values(run, OBJECTIVE_TAGS), tagged_values(partner, OBJECTIVE_TAGS)
        differing = sorted((step, tag) for (tag, step) in set(a) | set(b)
                           if a.get((tag, step)) != b.get((tag, step)))
        first = f"{differing[0][1]} at step {differing[0][0]}" if differing else None
        rows.append(EquivalenceRow(run, partner, expected_equivalence(run.config), max_abs,
                                   len(common), bool(a) and not differing, first))
    return rows


def has_sigma_head_knobs(runs: list[Run]) -> bool:
    return any(as_float(run.config.get(key)) not in (None, 1.0)
               for run in runs for key in SIGMA_HEAD_KEYS)
