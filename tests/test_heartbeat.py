"""A `running` run on another host (a cluster's other node) is decided by its heartbeat: the
training renews a timestamp in summary.json, a stale one means the process is gone, so a rerun of
the sweep resumes the run and the report says "stale since …". The host is faked here."""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

import pytest
from conftest import TINY, run_cli
from test_report import make_run, read_csv, run_report

from vae_bench import tracking
from vae_bench.tracking import STALE_AFTER_S, Tracker, process_gone, stale_since

ELSEWHERE = socket.gethostname() + "-elsewhere"


def test_the_heartbeat_is_renewed_while_running_and_stops_at_the_end(tmp_path: Path,
                                                                     monkeypatch) -> None:
    monkeypatch.setattr(tracking, "HEARTBEAT_S", 0.05)
    tracker = Tracker(tmp_path)
    tracker.scalars({"test/elbo": -100.0}, step=1, epoch=1)
    first = tracker.write_summary("running", step=1)["heartbeat"]
    deadline = time.monotonic() + 10
    renewed = first
    while renewed == first and time.monotonic() < deadline:
        time.sleep(0.05)
        renewed = json.loads((tmp_path / "summary.json").read_text())["heartbeat"]
    assert renewed > first
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "running" and summary["test/elbo"] == -100.0  # the rest kept

    tracker.write_summary("completed", step=2)
    time.sleep(0.3)  # several beats: none may overwrite the end
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "completed"
    tracker.close()
    assert not tracker._heartbeat.is_alive()


def test_process_gone_by_heartbeat_elsewhere_and_by_pid_here() -> None:
    now = time.time()
    stale = {"status": "running", "pid": 12345, "host": ELSEWHERE,
             "heartbeat": now - STALE_AFTER_S - 1}
    fresh = {**stale, "heartbeat": now - 1}
    assert process_gone(stale) and stale_since(stale) == stale["heartbeat"]
    assert not process_gone(fresh) and stale_since(fresh) is None
    assert not process_gone({"status": "running", "pid": 12345, "host": ELSEWHERE})  # no beat
    # Here the process table decides, whatever the heartbeat says.
    here = {"status": "running", "pid": os.getpid(), "host": socket.gethostname(),
            "heartbeat": now - 10 * STALE_AFTER_S}
    assert not process_gone(here) and stale_since(here) is None


def test_report_says_stale_since_and_still_running_where_it_checked(tmp_path: Path,
                                                                    capsys) -> None:
    now = time.time()
    sweep = tmp_path / "sweep"
    make_run(sweep, ["param=logvar", "seed=0"], curve=[-120.0])
    make_run(sweep, ["param=logvar", "seed=1"], status="running", curve=[-121.0],
             extra={"pid": 4242, "host": ELSEWHERE, "heartbeat": now - STALE_AFTER_S - 60})
    make_run(sweep, ["param=logvar", "seed=2"], status="running", curve=[-121.0],
             extra={"pid": 4243, "host": ELSEWHERE, "heartbeat": now - 5})
    make_run(sweep, ["param=logvar", "seed=3"], status="running", curve=[-121.0],
             extra={"pid": os.getpid(), "host": socket.gethostname()})
    run_report(capsys, sweep, "--no-figures")
    rows = {row["run"]: row["status"] for row in read_csv(sweep / "report.csv")}
    assert rows == {"param=logvar,seed=0": "completed", "param=logvar,seed=1": "killed",
                    "param=logvar,seed=2": "running", "param=logvar,seed=3": "running"}
    lines = (sweep / "report.md").read_text().splitlines()
    stale = next(line for line in lines if "seed=1 |" in line)
    beat = time.strftime("%Y-%m-%d %H:%M", time.localtime(now - STALE_AFTER_S - 60))
    assert f"stale since {beat}" in stale and ELSEWHERE in stale and "vae-bench resume" in stale
    fresh = next(line for line in lines if "seed=2 |" in line)
    assert "last heartbeat" in fresh and ELSEWHERE in fresh
    here = next(line for line in lines if "seed=3 |" in line)
    assert "cannot check" not in here and "this host" in here


def fake_elsewhere(run_dir: Path, heartbeat: float) -> None:
    """Make the run's summary say `running` on another host, as a run killed there leaves it."""
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.update(status="running", pid=4242, host=ELSEWHERE, heartbeat=heartbeat)
    (run_dir / "summary.json").write_text(json.dumps(summary))


@pytest.mark.slow
def test_a_rerun_resumes_a_stale_run_and_leaves_a_fresh_one(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    command = ["train", "-m", *TINY, "trainer.epochs=1", "seed=0,1", f"hydra.sweep.dir={sweep}"]
    first = run_cli(command, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    fake_elsewhere(sweep / "seed=0", heartbeat=time.time() - STALE_AFTER_S - 60)
    fake_elsewhere(sweep / "seed=1", heartbeat=time.time())

    second = run_cli(command, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    output = second.stdout + second.stderr
    assert "seed=0: its earlier attempt ended running; continuing from its last checkpoint" \
        in output
    assert json.loads((sweep / "seed=0" / "summary.json").read_text())["status"] == "completed"
    assert "still `running`" in output and ELSEWHERE in output
    assert json.loads((sweep / "seed=1" / "summary.json").read_text())["host"] == ELSEWHERE
    assert "1 completed" in output and "1 left untouched" in output
