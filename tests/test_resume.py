"""Resume, clean interrupts and atomic writes.

The end-to-end tests interrupt real `vae-bench` subprocesses (SIGTERM, SIGINT, SIGKILL) and
compare what the resumed runs leave behind with one uninterrupted run of the same config: the
summary, every (step, tag) value in metrics.jsonl and the TensorBoard curves must be identical,
bit for bit, except for wall-clock timings.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import event_scalars, start_cli

from vae_bench import checkpoints
from vae_bench.tracking import Tracker, read_metrics

EPOCHS = 2
STEPS_PER_EPOCH = 64  # 512 examples in batches of 8: long enough epochs to stop one midway
# log.grad_every=snr_window: every step lies inside a gradient-SNR window, so each checkpoint
# carries the diagnostics' running sums. No epoch end (a multiple of 64) is a step at which
# diagnostics log (multiples of 10 or of 30, or 9 mod 10), so TensorBoard's purge at the step
# after a checkpoint can separate what came before it from what came after.
ARGS = ["dataset=synthetic", "dataset.num_train=512", "dataset.num_test=128",
        "dataset.binarize=true", f"trainer.epochs={EPOCHS}", "trainer.batch_size=8",
        "eval.iwae_k=5", "log.quiet=true", "log.every_steps=8", "log.grad_every=10",
        "log.snr_window=10", "log.hist_every=30", "trainer.threads=1"]
COMPARED = ("test/elbo", "test/kl", "test/recon_nll", "test/nll_iwae", "latent/active_units")
# Wall-clock measurements: the only values allowed to differ from the uninterrupted run.
TIMINGS = {"train/epoch_seconds", "train/epoch_seconds_all", "train/examples_per_s",
           "eval/iwae_seconds"}
NOT_METRICS = {"step", "epoch"}
TIMEOUT = 300


# ---- helpers ------------------------------------------------------------------------------------


def read_summary(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):  # not written yet
        return {}


def logged_steps(run_dir: Path) -> list[int]:
    """Steps in metrics.jsonl, read while a process may be appending to it."""
    try:
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return []
    steps = []
    for line in lines:
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:  # a line being written
            pass
    return steps


def checkpoint_state(run_dir: Path, name: str = checkpoints.LAST) -> dict:
    path = run_dir / checkpoints.CHECKPOINT_DIR / name
    return torch.load(path, map_location="cpu", weights_only=False)["state"]


def signal_after(proc: subprocess.Popen, run_dir: Path, epoch: int, signum: int) -> dict:
    """Send `signum` once epoch `epoch` is checkpointed and a later step was logged (so the
    process is inside the next epoch), then wait for the process to end."""
    deadline = time.monotonic() + TIMEOUT
    sent = False
    while proc.poll() is None and time.monotonic() < deadline:
        summary = read_summary(run_dir)  # epoch is written after that epoch's checkpoint
        if summary.get("epoch", 0) >= epoch and max(logged_steps(run_dir)) > summary["step"]:
            proc.send_signal(signum)
            sent = True
            break
        time.sleep(0.02)
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    assert sent, f"the run ended before it could be signalled:\n{stderr}"
    return {"returncode": proc.returncode, "stdout": stdout, "stderr": stderr,
            "summary": read_summary(run_dir), "logged_steps": logged_steps(run_dir)}


def finish(proc: subprocess.Popen, run_dir: Path) -> dict:
    stdout, stderr = proc.communicate(timeout=TIMEOUT)
    return {"returncode": proc.returncode, "stdout": stdout, "stderr": stderr,
            "summary": read_summary(run_dir)}


def metric_values(run_dir: Path) -> dict[tuple[int, str], object]:
    return {(record["step"], tag): value for record in read_metrics(run_dir)
            for tag, value in record.items() if tag not in NOT_METRICS | TIMINGS}


def duplicated_pairs(run_dir: Path) -> list[tuple[int, str]]:
    counts = collections.Counter((record["step"], tag) for record in read_metrics(run_dir)
                                 for tag in record if tag not in NOT_METRICS)
    return [pair for pair, count in counts.items() if count > 1]


# ---- the runs: one uninterrupted, two interrupted and resumed, all at once --------------------


def sigterm_then_sigkill(folder: Path, stages: dict) -> None:
    """SIGTERM mid-epoch 2 and resume from there; SIGKILL a few steps later, resume again."""
    run = folder / "term_kill"
    stages["sigterm"] = signal_after(start_cli(["train", *ARGS, f"hydra.run.dir={run}"], folder),
                                     run, 1, signal.SIGTERM)
    stages["sigterm_checkpoint"] = checkpoint_state(run)
    stages["sigkill"] = signal_after(start_cli(["resume", str(run)], folder), run, 1,
                                     signal.SIGKILL)
    stages["sigkill_checkpoint"] = checkpoint_state(run)
    stages["resumed"] = finish(start_cli(["resume", str(run)], folder), run)


def sigint_then_corrupt(folder: Path, stages: dict) -> None:
    """SIGINT mid-epoch 2; cut last.pt short; resume: it falls back to previous.pt, the end of
    epoch 1."""
    run = folder / "int_corrupt"
    stages["sigint"] = signal_after(start_cli(["train", *ARGS, f"hydra.run.dir={run}"], folder),
                                    run, 1, signal.SIGINT)
    stages["sigint_checkpoint"] = checkpoint_state(run)
    stages["previous_checkpoint"] = checkpoint_state(run, checkpoints.PREVIOUS)
    last = run / checkpoints.CHECKPOINT_DIR / checkpoints.LAST
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a write cut short
    stages["resumed"] = finish(start_cli(["resume", str(run)], folder), run)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("resume")
    baseline_dir = folder / "uninterrupted"
    baseline = start_cli(["train", *ARGS, f"hydra.run.dir={baseline_dir}"], folder)
    chains = {"term_kill": (sigterm_then_sigkill, {}), "int_corrupt": (sigint_then_corrupt, {})}
    errors = []

    def run_chain(function, stages):
        try:
            function(folder, stages)
        except BaseException as error:  # reported by every test that needs the chain
            errors.append(error)

    threads = [threading.Thread(target=run_chain, args=chain) for chain in chains.values()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result = {name: stages for name, (_, stages) in chains.items()}
    result["uninterrupted"] = finish(baseline, baseline_dir)
    if errors:
        raise errors[0]
    assert result["uninterrupted"]["returncode"] == 0, result["uninterrupted"]["stderr"]
    result["dirs"] = {name: folder / name for name in ("uninterrupted", *chains)}
    return result


# ---- interrupts ---------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(("chain", "stage", "name"), [("term_kill", "sigterm", "SIGTERM"),
                                                      ("int_corrupt", "sigint", "SIGINT")])
def test_signal_stops_after_the_current_step_with_a_mid_epoch_checkpoint(
        runs, chain: str, stage: str, name: str) -> None:
    result, state = runs[chain][stage], runs[chain][f"{stage}_checkpoint"]
    assert result["returncode"] == 130, result["stderr"]
    assert "Traceback" not in result["stderr"]
    summary = result["summary"]
    assert summary["status"] == "interrupted"
    assert summary["signal"] == name
    # The checkpoint holds the step the run stopped at, inside epoch 2, and nothing was logged
    # after it (the unlogged train window travels in the checkpoint instead).
    assert state["step"] == summary["step"] >= max(result["logged_steps"])
    assert state["window"] is not None
    assert state["epoch"] == summary["epoch"] == 1
    assert 0 < state["batch_in_epoch"] < STEPS_PER_EPOCH
    assert state["step"] == STEPS_PER_EPOCH + state["batch_in_epoch"]


@pytest.mark.slow
def test_sigkill_mid_epoch_leaves_the_last_checkpoint(runs) -> None:
    killed = runs["term_kill"]["sigkill"]
    assert killed["returncode"] == -signal.SIGKILL
    assert killed["summary"]["status"] == "running"  # no chance to write its end
    # ... but it names its process, so the report can tell a killed run from a running one.
    from vae_bench.tracking import process_gone

    assert process_gone(killed["summary"])
    # Killed inside epoch 2, before that epoch's checkpoint: the last one is still SIGTERM's.
    checkpoint = runs["term_kill"]["sigkill_checkpoint"]
    assert checkpoint["step"] == runs["term_kill"]["sigterm_checkpoint"]["step"]
    assert checkpoint["epoch"] == 1
    # The killed process logged steps past that checkpoint: the resume has something to purge.
    assert max(killed["logged_steps"]) > checkpoint["step"]


@pytest.mark.slow
def test_corrupt_last_checkpoint_falls_back_to_the_previous_one_and_says_so(runs) -> None:
    resumed = runs["int_corrupt"]["resumed"]
    assert runs["int_corrupt"]["previous_checkpoint"]["step"] == STEPS_PER_EPOCH
    assert resumed["returncode"] == 0, resumed["stderr"]
    said = resumed["stdout"] + resumed["stderr"]  # the log goes to the console as train's does
    assert "unreadable" in said
    assert "resuming from the previous good checkpoint" in said
    assert checkpoints.PREVIOUS in said


# ---- resumed == uninterrupted -------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("chain", ["term_kill", "int_corrupt"])
def test_resumed_run_ends_bitwise_equal_to_the_uninterrupted_one(runs, chain: str) -> None:
    resumed = runs[chain]["resumed"]
    assert resumed["returncode"] == 0, resumed["stderr"]
    expected, actual = runs["uninterrupted"]["summary"], resumed["summary"]
    assert actual["status"] == "completed"
    for tag in COMPARED:
        assert actual[tag] == expected[tag], tag  # exact: the same floats, bit for bit
    assert set(actual) == set(expected)
    differing = {k for k in expected if k not in TIMINGS and actual[k] != expected[k]}
    assert not differing, {k: (expected[k], actual[k]) for k in differing}


@pytest.mark.slow
@pytest.mark.parametrize("chain", ["term_kill", "int_corrupt"])
def test_metrics_jsonl_continues_without_duplicates_or_gaps(runs, chain: str) -> None:
    run_dir, baseline_dir = runs["dirs"][chain], runs["dirs"]["uninterrupted"]
    assert duplicated_pairs(run_dir) == []
    assert duplicated_pairs(baseline_dir) == []
    # Every (step, tag) of the uninterrupted run, with the same value, and nothing else.
    assert metric_values(run_dir) == metric_values(baseline_dir)


@pytest.mark.slow
@pytest.mark.parametrize("chain", ["term_kill", "int_corrupt"])
def test_tensorboard_curves_continue_without_duplicates_or_gaps(runs, chain: str) -> None:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    run_dir = runs["dirs"][chain]
    scalars, expected = event_scalars(run_dir), event_scalars(runs["dirs"]["uninterrupted"])
    test_elbo_steps = [step for step, _ in scalars["test/elbo"]]
    assert test_elbo_steps == [STEPS_PER_EPOCH * (epoch + 1) for epoch in range(EPOCHS)]
    assert set(scalars) == set(expected)
    for tag, points in expected.items():
        if tag in TIMINGS:
            assert [s for s, _ in scalars[tag]] == [s for s, _ in points], tag
        else:
            assert scalars[tag] == points, tag

    # Each resumed process starts its event file with SessionLog.START at its purge step, and
    # TensorBoard's reader drops what earlier files hold at and after that step. SIGINT closes
    # the writer, so that run's file certainly holds points past the checkpoint it resumed from
    # (a SIGKILLed writer may not have flushed its last points at all).
    raw = collections.Counter()
    starts = []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            if event.HasField("session_log") and event.session_log.status == 1:  # START
                starts.append(event.step)
            for value in event.summary.value:
                if value.tag == "train/elbo":
                    raw[event.step] += 1
    if chain == "term_kill":
        assert runs[chain]["sigterm_checkpoint"]["step"] + 1 in starts
    else:
        resumed_from = STEPS_PER_EPOCH  # previous.pt, the end of epoch 1
        assert starts == [resumed_from + 1]
        assert any(count > 1 for step, count in raw.items() if step > resumed_from)


# ---- a sweep in which one job is stopped --------------------------------------------------------


@pytest.mark.slow
def test_joblib_sweep_keeps_the_other_jobs_when_one_is_terminated(tmp_path: Path) -> None:
    """SIGTERM to the worker running one job: that job ends `interrupted`, the others complete.

    (A SIGKILLed loky worker instead makes joblib abort the whole sweep: TerminatedWorkerError.)
    """
    args = ["train", "-m", "dataset=synthetic", "dataset.num_train=256", "dataset.num_test=64",
            "trainer.epochs=1", "trainer.batch_size=4", "eval.iwae_k=5", "log.quiet=true",
            "log.every_steps=4", "trainer.threads=1", "seed=0,1,2,3", "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2", "hydra.sweep.dir=sweep"]
    sweep = tmp_path / "sweep"
    proc = start_cli(args, tmp_path)
    target = sweep / "seed=1"
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        # metrics.jsonl appears at the first logged step, inside the loop that handles signals.
        events = list(target.glob("events.out.tfevents.*"))
        if events and logged_steps(target):
            worker = int(events[0].name.split(".")[-2])  # the writer's pid is in the name
            os.kill(worker, signal.SIGTERM)
            break
        time.sleep(0.02)
    result = finish(proc, sweep)
    assert result["returncode"] == 0, result["stderr"]
    statuses = {seed: read_summary(sweep / f"seed={seed}").get("status") for seed in range(4)}
    assert statuses == {0: "completed", 1: "interrupted", 2: "completed", 3: "completed"}

    pytest.importorskip("vae_bench.report")
    report = subprocess.run([sys.executable, "-m", "vae_bench", "report", str(sweep)],
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert report.returncode == 0, report.stderr
    rows = list(csv.DictReader(io.StringIO((sweep / "report.csv").read_text())))
    assert {row["run"]: row["status"] for row in rows} == {
        f"seed={seed}": status for seed, status in statuses.items()}


# ---- atomic writes (in-process) -----------------------------------------------------------------


def save_checkpoint(run_dir: Path, model: torch.nn.Module, step: int) -> None:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    generator = torch.Generator().manual_seed(0)
    state = checkpoints.TrainState(step=step, order_state=generator.get_state())
    checkpoints.save(run_dir, model, optimizer, generator, torch.Generator(), state)


def write_half_then_fail(real_save):
    def broken_save(obj, handle, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(28, "No space left on device")
    return broken_save


def test_crash_while_writing_a_checkpoint_keeps_the_last_one(tmp_path: Path,
                                                              monkeypatch) -> None:
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path, model, step=1)
    first = {k: v.clone() for k, v in model.state_dict().items()}
    save_checkpoint(tmp_path, model, step=2)
    with torch.no_grad():
        model.weight.add_(1.0)
    monkeypatch.setattr(torch, "save", write_half_then_fail(torch.save))
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path, model, step=3)
    monkeypatch.undo()

    payload, path = checkpoints.load_payload(tmp_path)
    assert path.name == checkpoints.LAST
    assert payload["state"]["step"] == 2  # the last complete checkpoint, untouched
    assert torch.equal(payload["model"]["weight"], first["weight"])
    previous = torch.load(tmp_path / checkpoints.CHECKPOINT_DIR / checkpoints.PREVIOUS,
                          weights_only=False)
    assert previous["state"]["step"] == 1


def test_missing_or_corrupt_last_checkpoint_falls_back_to_previous(tmp_path: Path,
                                                                   caplog) -> None:
    model = torch.nn.Linear(3, 2)
    save_checkpoint(tmp_path, model, step=1)
    save_checkpoint(tmp_path, model, step=2)
    last = tmp_path / checkpoints.CHECKPOINT_DIR / checkpoints.LAST
    last.write_bytes(b"PK\x03\x04 not a whole zip file")
    with caplog.at_level(logging.WARNING, logger="vae_bench.checkpoints"):
        payload, path = checkpoints.load_payload(tmp_path)
    assert path.name == checkpoints.PREVIOUS and payload["state"]["step"] == 1
    assert "previous good checkpoint" in caplog.text
    last.unlink()  # as a crash between the two renames of `save` would leave it
    payload, path = checkpoints.load_payload(tmp_path)
    assert path.name == checkpoints.PREVIOUS


def test_crash_while_writing_the_summary_keeps_the_previous_one(tmp_path: Path,
                                                                monkeypatch) -> None:
    import vae_bench.tracking as tracking

    tracker = Tracker(tmp_path)
    tracker.scalars({"test/elbo": -100.0}, step=1, epoch=1)
    tracker.write_summary("running", step=1)

    def open_that_fails_midway(path, mode="r", *args, **kwargs):
        handle = open(path, mode, *args, **kwargs)
        real_write = handle.write

        def write(text):
            real_write(text[: len(text) // 2])
            raise OSError(28, "No space left on device")
        handle.write = write
        return handle

    monkeypatch.setattr(tracking, "open", open_that_fails_midway, raising=False)
    tracker.scalars({"test/elbo": -90.0}, step=2, epoch=2)  # metrics.jsonl is already open
    with pytest.raises(OSError, match="No space"):
        tracker.write_summary("completed", step=2)
    monkeypatch.undo()
    tracker.close()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "running" and summary["test/elbo"] == -100.0


def test_resumed_tracker_drops_records_written_after_the_checkpoint(tmp_path: Path) -> None:
    tracker = Tracker(tmp_path)
    tracker.scalars({"train/elbo": -3.0}, step=8, epoch=1)
    tracker.scalars({"test/elbo": -2.0}, step=8, epoch=1)
    at_checkpoint = tracker.state()
    # After the checkpoint at step 8: diagnostics of the next step are logged at step 8 too.
    tracker.scalars({"grad/norm_total": 5.0}, step=8, epoch=2)
    tracker.scalars({"train/elbo": -1.0}, step=12, epoch=2)
    tracker.close()
    with open(tmp_path / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 16, "train/el')  # cut short by SIGKILL

    resumed = Tracker(tmp_path, purge_step=9, keep_records=at_checkpoint["metrics_records"])
    resumed.scalars({"grad/norm_total": 5.0}, step=8, epoch=2)
    resumed.close()
    records = read_metrics(tmp_path)
    assert [(r["step"], [k for k in r if k not in NOT_METRICS]) for r in records] == [
        (8, ["train/elbo"]), (8, ["test/elbo"]), (8, ["grad/norm_total"])]
    assert resumed.latest == {"train/elbo": -3.0, "test/elbo": -2.0, "grad/norm_total": 5.0}
    assert resumed.state()["metrics_records"] == 3
