"""Non-finite values: `trainer.on_nonfinite=stop` ends the run as `diverged` with the last finite
metrics; `skip` skips and counts bad updates and gives up after `trainer.max_skips` in a row.

Most tests train a tiny model in-process and make chosen training steps non-finite by wrapping
the loss terms, so the step of the blow-up is known exactly. The CLI tests check the exit code
of a diverged run and a stress sweep of every σ-parameterization at a learning rate of 1.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_config, event_accumulator

import vae_bench.train as train_module
from vae_bench import checkpoints
from vae_bench.parameterizations import SIGMA_MAPS
from vae_bench.tracking import read_metrics

STEPS_PER_EPOCH = 8
TINY = ["dataset=synthetic", "dataset.num_train=64", "dataset.num_test=32",
        "trainer.batch_size=8", "trainer.epochs=3", "eval.iwae_k=5", "log.quiet=true",
        "log.every_steps=4", "log.grad_every=4", "log.snr_window=2", "log.images=false",
        "trainer.threads=1"]
STRESS = ["dataset=synthetic", "dataset.num_train=512", "dataset.num_test=128",
          "trainer.epochs=2", "eval.iwae_k=5", "log.quiet=true",
          "trainer.threads=1", "optim=sgd", "optim.lr=1.0"]


def train_with_nan_at(tmp_path: Path, monkeypatch, nan_steps: set[int],
                      overrides: list[str] = ()) -> dict:
    """Train in-process; the loss of each step index in `nan_steps` (0-based) is NaN."""
    calls = itertools.count()
    real_terms = train_module.elbo_terms

    def terms_with_nan(model, x, generator=None):
        terms = real_terms(model, x, generator)
        if next(calls) in nan_steps:  # NaN in the loss, hence in every gradient too
            terms = terms._replace(recon_nll=terms.recon_nll * math.nan)
        return terms

    monkeypatch.setattr(train_module, "elbo_terms", terms_with_nan)
    cfg = compose_config([*TINY, *overrides])
    return train_module.train(cfg, tmp_path, quiet=True)


def assert_all_finite(summary: dict) -> None:
    for key, value in summary.items():
        if isinstance(value, float | int):
            assert math.isfinite(value), key
        else:  # non-finite numbers would be stored as the strings "nan" / "inf"
            assert value not in ("nan", "inf", "-inf"), key


def event_texts(run_dir: Path) -> list[str]:
    accumulator = event_accumulator(run_dir)
    return [text.decode() for event in accumulator.Tensors("events/text_summary")
            for text in event.tensor_proto.string_val]


def last_logged(run_dir: Path, tag: str) -> float:
    return [record[tag] for record in read_metrics(run_dir) if tag in record][-1]


def test_stop_ends_the_run_with_the_last_finite_metrics(tmp_path: Path, monkeypatch) -> None:
    # Step 11 is in epoch 2; the flag is read at the next log step (12), before that window's
    # values are logged, even though check_every is 10.
    summary = train_with_nan_at(tmp_path, monkeypatch, {11})
    assert summary["status"] == "diverged"
    assert summary["diverged_step"] == 11
    assert summary["diverged_epoch"] == 2
    assert summary["epoch"] == 1 and summary["step"] == 12
    assert summary["health/nonfinite_steps"] >= 1
    assert_all_finite(summary)
    assert summary == json.loads((tmp_path / "summary.json").read_text())
    # The values kept are those logged before the blow-up: epoch 1's test metrics, the window
    # that ended at step 8, and nothing non-finite was logged at all.
    records = read_metrics(tmp_path)
    assert summary["test/elbo"] == last_logged(tmp_path, "test/elbo")
    assert [r["step"] for r in records if "test/elbo" in r] == [STEPS_PER_EPOCH]
    assert [r["step"] for r in records if "train/elbo" in r] == [4, 8]
    assert all(value not in ("nan", "inf", "-inf") for r in records for value in r.values())
    # No checkpoint of the diverged state: the last one is the end of epoch 1.
    payload, _ = checkpoints.load_payload(tmp_path)
    assert payload["state"]["step"] == STEPS_PER_EPOCH
    assert all(torch.isfinite(t).all() for t in payload["model"].values())
    assert any("diverged" in text and "step 11 (epoch 2)" in text
               for text in event_texts(tmp_path))


def test_skip_skips_and_counts_isolated_bad_steps(tmp_path: Path, monkeypatch) -> None:
    summary = train_with_nan_at(tmp_path, monkeypatch, {3, 12, 13},
                                ["trainer.on_nonfinite=skip", "trainer.max_skips=3"])
    assert summary["status"] == "completed"
    assert summary["step"] == 3 * STEPS_PER_EPOCH  # skipped steps count as steps
    assert summary["health/nonfinite_steps"] == 3
    assert_all_finite(summary)
    payload, _ = checkpoints.load_payload(tmp_path)
    assert all(torch.isfinite(t).all() for t in payload["model"].values())


def test_skip_gives_up_after_max_skips_in_a_row_also_across_epochs(tmp_path: Path,
                                                                   monkeypatch) -> None:
    # Steps 6 and 7 end epoch 1, steps 8 and 9 begin epoch 2: four in a row.
    summary = train_with_nan_at(tmp_path, monkeypatch, {6, 7, 8, 9},
                                ["trainer.on_nonfinite=skip", "trainer.max_skips=4"])
    assert summary["status"] == "diverged"
    assert summary["diverged_step"] == 6  # where the run of skips began
    assert summary["diverged_epoch"] == 2
    assert summary["step"] == 10
    assert "4 consecutive non-finite steps skipped" in summary["reason"]
    assert_all_finite(summary)


def test_non_finite_evaluation_is_a_divergence_not_a_crash(tmp_path: Path,
                                                           monkeypatch) -> None:
    """Finite steps can leave a model whose test metrics overflow (SGD at lr=1 does)."""
    calls = itertools.count()
    real_evaluate = train_module.evaluate

    def evaluate_overflowing_in_epoch_2(*args, **kwargs):
        results = real_evaluate(*args, **kwargs)
        if next(calls) == 1:
            results["test/elbo"] = results["test/elbo"] - math.inf
            results["kl_per_dim"] = results["kl_per_dim"] + math.inf
        return results

    monkeypatch.setattr(train_module, "evaluate", evaluate_overflowing_in_epoch_2)
    summary = train_module.train(compose_config(TINY), tmp_path, quiet=True)
    assert summary["status"] == "diverged"
    assert summary["diverged_epoch"] == 2 and summary["epoch"] == 1
    assert summary["diverged_step"] == summary["step"] == 2 * STEPS_PER_EPOCH
    assert "non-finite test metrics" in summary["reason"]
    assert_all_finite(summary)
    assert summary["test/elbo"] == last_logged(tmp_path, "test/elbo")
    payload, _ = checkpoints.load_payload(tmp_path)
    assert payload["state"]["epoch"] == 1


# ---- through the CLI ----------------------------------------------------------------------------


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vae_bench", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_diverged_single_run_exits_3_with_one_line(tmp_path: Path) -> None:
    result = run_cli(["train", *STRESS, "hydra.run.dir=run"], tmp_path)
    assert result.returncode == 3, result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged"
    assert result.stderr.strip().splitlines() == [
        f"vae-bench: run diverged at step {summary['diverged_step']} "
        f"(epoch {summary['diverged_epoch']}); see summary.json"]
    assert "Traceback" not in result.stdout + result.stderr


@pytest.mark.slow
def test_every_parameterization_at_lr_1_diverges_or_completes_never_crashes(
        tmp_path: Path) -> None:
    params = ",".join(SIGMA_MAPS)
    result = run_cli(["train", "-m", *STRESS, f"param={params}", "hydra.sweep.dir=sweep"],
                     tmp_path)
    assert result.returncode == 0, result.stderr  # a diverged job does not end the sweep
    assert "Traceback" not in result.stderr
    sweep = tmp_path / "sweep"
    statuses = {param: json.loads((sweep / f"param={param}" / "summary.json").read_text())
                ["status"] for param in SIGMA_MAPS}
    assert len(statuses) == 7
    assert set(statuses.values()) <= {"diverged", "completed"}, statuses

    pytest.importorskip("vae_bench.report")
    report = run_cli(["report", "sweep"], tmp_path)
    assert report.returncode == 0, report.stderr
    rows = csv.DictReader(io.StringIO((sweep / "report.csv").read_text()))
    assert {row["run"]: row["status"] for row in rows} == {
        f"param={param}": status for param, status in statuses.items()}
