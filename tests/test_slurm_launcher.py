"""The `slurm` launcher preset without a cluster: its checks before sbatch (time limit, GPUs that
follow trainer.device) and its bounded waits, against fake `sinfo`/`squeue` answers. The real
cluster's tests are in test_slurm.py."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import TINY, run_cli
from omegaconf import DictConfig, OmegaConf

from vae_bench import jobs, slurm
from vae_bench.config import ConfigError, config_dir

SLURM_SWEEP = ["train", "-m", *TINY, "seed=0,1", "hydra/launcher=slurm"]


def fake_sinfo(folder: Path, gres: str) -> dict[str, str]:
    """A `sinfo` on PATH that lists one node with this GRES; returns the environment for it."""
    folder.mkdir(exist_ok=True)
    script = folder / "sinfo"
    script.write_text(f"#!/bin/sh\necho '8|64000|{gres}'\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return {"PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}


def launcher_config(**overrides) -> DictConfig:
    """The preset's keys (not the plugin's defaults underneath), with these overrides."""
    preset = OmegaConf.load(config_dir() / "hydra" / "launcher" / "slurm.yaml")
    preset.pop("defaults")
    return OmegaConf.merge(preset, overrides)


# ---- checks before sbatch ---------------------------------------------------------------------


def test_a_time_limit_too_short_for_the_stop_warning_is_refused(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    result = run_cli([*SLURM_SWEEP, "hydra.launcher.timeout_min=2", f"hydra.sweep.dir={sweep}"],
                     tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr[-2000:]
    (line,) = result.stderr.strip().splitlines()
    assert "hydra.launcher.timeout_min=2" in line and "signal=TERM@120" in line
    assert "at least 4" in line
    assert not sweep.exists()  # refused before Hydra made anything


def test_time_limits_that_leave_room_pass() -> None:
    slurm.check_time_limit(launcher_config(timeout_min=4))
    slurm.check_time_limit(launcher_config(timeout_min=240))
    # Without `signal`, submitit's own USR2 warning, signal_delay_s before the limit.
    with pytest.raises(ConfigError, match="timeout_min=10 .*signal_delay_s=600"):
        slurm.check_time_limit(launcher_config(timeout_min=10, signal_delay_s=600,
                                               additional_parameters=None))


@pytest.mark.parametrize(("device", "gres", "gpus"), [
    ("cpu", None, 0),  # no cluster question at all
    ("auto", "(null)", 0),
    ("auto", "gpu:a100:4(S:0-1)", 1),
    ("cuda", "gpu:a100:4(S:0-1)", 1),
])
def test_gpus_follow_the_device(tmp_path: Path, monkeypatch, device: str, gres: str | None,
                                gpus: int) -> None:
    env = fake_sinfo(tmp_path / "bin", gres) if gres else {"PATH": str(tmp_path / "nothing")}
    monkeypatch.setenv("PATH", env["PATH"])
    assert slurm.gpus_per_node(launcher_config(), device) == gpus


def test_a_gpu_on_a_cpu_only_cluster_is_refused_in_one_line(tmp_path: Path) -> None:
    env = fake_sinfo(tmp_path / "bin", "(null)")
    sweep = tmp_path / "sweep"
    for device_or_gpus, named in (("trainer.device=cuda", "trainer.device=cuda"),
                                  ("hydra.launcher.gpus_per_node=2",
                                   "hydra.launcher.gpus_per_node=2")):
        result = run_cli([*SLURM_SWEEP, device_or_gpus, f"hydra.sweep.dir={sweep}"], tmp_path,
                         env=env, timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        (line,) = result.stderr.strip().splitlines()
        assert named in line and "no node" in line and "trainer.device=cpu" in line
        assert not sweep.exists()


def test_no_slurm_on_this_machine_is_one_line(tmp_path: Path) -> None:
    result = run_cli([*SLURM_SWEEP, f"hydra.sweep.dir={tmp_path / 'sweep'}"], tmp_path,
                     env={"PATH": str(Path(subprocess.__file__).parent)}, timeout=120)
    if result.returncode != 2:  # python itself is found by its full path; PATH lacks sinfo
        pytest.fail(result.stderr[-2000:])
    (line,) = result.stderr.strip().splitlines()
    assert "sinfo is not on PATH" in line


# ---- bounded waits ------------------------------------------------------------------------------


class FakeJob:
    def __init__(self, folder: Path, job_id: str, result: object = None):
        self.job_id = job_id
        self.paths = SimpleNamespace(result_pickle=folder / f"{job_id}_result.pkl",
                                     stdout=folder / f"{job_id}_log.out",
                                     stderr=folder / f"{job_id}_log.err")
        self.result = result

    def results(self) -> list:
        return [self.result]


def write_run(run_dir: Path, summary: dict) -> None:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 0\n")
    (run_dir / "summary.json").write_text(json.dumps(summary))


def test_a_job_that_ends_without_a_result_is_recorded_killed(tmp_path: Path, monkeypatch,
                                                             capsys) -> None:
    """squeue says the job failed (its worker was SIGKILLed), and no result file comes: after
    the grace, its `running` run is recorded `killed`, the journal counts it, the job's own
    warning lines are shown, and the wait ends. Another job's result is taken as it is."""
    monkeypatch.setattr(slurm, "RESULT_GRACE_S", 0.0)
    monkeypatch.setattr(slurm.time, "sleep", lambda seconds: None)
    states = {"7_0": ("COMPLETED", "None"), "7_1": ("OUT_OF_MEMORY", "OutOfMemory")}
    monkeypatch.setattr(slurm, "queue_states", lambda ids: states)
    sweep = tmp_path / "sweep"
    done, killed = FakeJob(tmp_path, "7_0", result="job 0's return"), FakeJob(tmp_path, "7_1")
    done.paths.result_pickle.write_text("")
    killed.paths.stdout.write_text(
        "[2026-01-01 00:00:00,000][vae_bench][WARNING] - x: its earlier attempt ended killed\n"
        "[2026-01-01 00:00:01,000][vae_bench.train][INFO] - device cpu\n")
    write_run(sweep / "seed=1", {"status": "running", "pid": 99, "host": "node7", "step": 3})
    returns = slurm.watch([done, killed], lambda index: sweep / f"seed={index}",
                          [["seed=0"], ["seed=1"]], sweep)
    assert returns[0] == "job 0's return"
    assert returns[1].return_value is None and returns[1].overrides == ["seed=1"]
    summary = json.loads((sweep / "seed=1" / "summary.json").read_text())
    assert summary["status"] == "killed" and summary["slurm_state"] == "OUT_OF_MEMORY"
    assert summary["step"] == 3 and summary["host"] == "node7"  # what the run wrote is kept
    assert [e["status"] for e in jobs.read_journal(sweep)] == ["killed"]
    out = capsys.readouterr().out
    assert "its earlier attempt ended killed" in out and "device cpu" not in out
    assert "7_1 ended OUT_OF_MEMORY without returning" in out
    assert f"hydra.sweep.dir={sweep}" in out


def test_a_run_that_wrote_its_own_end_keeps_it(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(slurm, "RESULT_GRACE_S", 0.0)
    monkeypatch.setattr(slurm.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(slurm, "queue_states", lambda ids: {})  # purged from the queue
    sweep = tmp_path / "sweep"
    write_run(sweep / "seed=0", {"status": "interrupted", "signal": "SIGTERM"})
    slurm.watch([FakeJob(tmp_path, "8_0")], lambda index: sweep / "seed=0", [["seed=0"]], sweep)
    assert json.loads((sweep / "seed=0" / "summary.json").read_text())["status"] == "interrupted"
    assert [e["status"] for e in jobs.read_journal(sweep)] == ["interrupted"]


def test_a_silent_queue_ends_the_wait(tmp_path: Path, monkeypatch, capsys) -> None:
    """squeue never answers: after QUEUE_SILENCE_S the sweep stops waiting and says so."""
    clock = [0.0]

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    monkeypatch.setattr(slurm.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(slurm.time, "sleep", sleep)
    monkeypatch.setattr(slurm, "queue_states", lambda ids: None)
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    returns = slurm.watch([FakeJob(tmp_path, "9_0")], lambda index: sweep / "seed=0",
                          [["seed=0"]], sweep)
    assert returns[0].return_value is None
    assert slurm.QUEUE_SILENCE_S < clock[0] <= slurm.QUEUE_SILENCE_S + slurm.POLL_MAX_S + 1
    assert "squeue has not answered" in capsys.readouterr().out
    assert [e["status"] for e in jobs.read_journal(sweep)] == ["unknown"]


def test_a_running_job_is_waited_for(tmp_path: Path, monkeypatch) -> None:
    """A job squeue lists as running is never given up on while squeue answers; its result
    ends the wait."""
    monkeypatch.setattr(slurm, "RESULT_GRACE_S", 0.0)
    job = FakeJob(tmp_path, "10_0", result="done")
    polls = []

    def states(ids):
        polls.append(1)
        if len(polls) == 5:
            job.paths.result_pickle.write_text("")
        return {"10_0": ("RUNNING", "None")} if len(polls) > 2 else {"10_0": ("PENDING",
                                                                              "Resources")}

    monkeypatch.setattr(slurm.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(slurm, "queue_states", states)
    assert slurm.watch([job], lambda index: tmp_path, [[]], tmp_path) == ["done"]
    assert len(polls) == 5


def test_a_job_that_can_never_start_is_cancelled(tmp_path: Path, monkeypatch, capsys) -> None:
    """A task pending for a reason that never passes (more CPUs than any node has) would keep
    the sweep waiting forever: it is cancelled and counted as failed."""
    cancels = []
    monkeypatch.setattr(slurm.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(slurm, "queue_states", lambda ids: {"11_0": ("PENDING",
                                                                     "PartitionConfig")})
    monkeypatch.setattr(slurm, "run_command", lambda command: cancels.append(command))
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    slurm.watch([FakeJob(tmp_path, "11_0")], lambda index: sweep / "seed=0", [["seed=0"]], sweep)
    assert cancels == [["scancel", "11_0"]]
    assert "will never start job 11_0" in capsys.readouterr().out
    assert [e["status"] for e in jobs.read_journal(sweep)] == ["failed"]


def test_more_cpus_or_memory_than_any_node_has_is_refused(tmp_path: Path) -> None:
    env = fake_sinfo(tmp_path / "bin", "(null)")  # 8 CPUs, 64000 MB
    for override, named in (("hydra.launcher.cpus_per_task=16", "cpus_per_task=16"),
                            ("hydra.launcher.mem_gb=100", "mem_gb=100")):
        result = run_cli([*SLURM_SWEEP, override, f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                         tmp_path, env=env, timeout=120)
        assert result.returncode == 2, result.stderr[-2000:]
        (line,) = result.stderr.strip().splitlines()
        assert named in line and "more than any node" in line


def test_hydra_finds_vae_benchs_launchers_however_vae_bench_is_installed(tmp_path) -> None:
    """Hydra's plugin scan walks the hydra_plugins folders; an editable install alone does not
    put vae-bench's among them ("Unknown plugin class"): importing the CLI does, before Hydra
    runs its scan (once per process), here from a folder that is not the checkout."""
    import subprocess
    import sys

    program = ("import vae_bench.cli\n"
               "from hydra.core.plugins import Plugins\n"
               "from hydra.plugins.launcher import Launcher\n"
               "print(sorted(f'{c.__module__}.{c.__name__}' "
               "for c in Plugins.instance().discover(Launcher)))\n")
    found = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert found.returncode == 0, found.stderr
    assert "hydra_plugins.vae_bench_launcher.slurm_launcher.SlurmLauncher" in found.stdout
    assert "hydra_plugins.vae_bench_launcher.local_launcher.LocalLauncher" in found.stdout
