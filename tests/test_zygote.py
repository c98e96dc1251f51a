"""A launcher worker's zygote (vae_bench/zygote.py): jobs forked from it train exactly as jobs
started as fresh interpreters, a killed or stopped job is reported as such, the zygote forks only
while it is a single thread, and a zygote that dies mid-sweep neither hangs the sweep nor loses a
job."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TINY, run_cli, start_cli

from vae_bench import job_start, jobs, zygote

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the zygote is Linux-only")
TESTS = Path(__file__).resolve().parent
TIMEOUT = 300
TIMINGS = ("seconds", "examples_per_s")


def zygote_env() -> dict[str, str]:
    """The jobs' environment, with this folder importable for zygote_targets."""
    env = job_start.child_environment()
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


@contextlib.contextmanager
def started(target: str, preload: list[str] = ()):
    process = zygote.Zygote(target, list(preload), zygote_env())
    try:
        yield process
    finally:
        process.stop()


def wait_for(path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.01)


def without_timings(record: dict) -> dict:
    return {k: v for k, v in record.items()
            if not any(t in k for t in TIMINGS) and k not in ("pid", "host", "time")}


def closing_counts(output: str) -> str:
    (line,) = [line for line in output.splitlines() if "sweep finished" in line]
    return line.split("sweep finished, ", 1)[1]


# ---- the import circle ----------------------------------------------------------------------


def test_jobs_does_not_import_the_cli_and_the_zygote_module_imports_no_torch() -> None:
    """jobs.py and cli.py share what both need through errors.py; zygote.py binds its socket
    before it imports anything heavy, so it imports only the standard library itself."""
    code = ("import sys, vae_bench.jobs; assert 'vae_bench.cli' not in sys.modules, 'cli'\n"
            "del sys.modules['vae_bench.zygote']\n"
            "before = set(sys.modules); import vae_bench.zygote\n"
            "assert not {m for m in set(sys.modules) - before if m.startswith('torch')}\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=TIMEOUT)
    fresh = subprocess.run([sys.executable, "-c", "import sys, vae_bench.zygote; "
                            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                            "('torch', 'numpy', 'hydra', 'omegaconf')))"],
                           capture_output=True, text=True, check=True, timeout=TIMEOUT)
    assert fresh.stdout.strip() == "[]"


# ---- the zygote starts with the command -----------------------------------------------------


@pytest.mark.parametrize("argv, expected", [
    (["train", "-m", "seed=0,1"], True),
    (["train", "--multirun", "hydra/launcher=basic", "seed=0,1"], True),
    (["train", "-m", "hydra/launcher=local", "seed=0,1"], True),
    (["train", "seed=0"], False),  # a single run trains in this process
    (["train", "-m", "hydra/launcher=joblib", "seed=0,1"], False),  # its workers have their own
    (["train", "-m", "hydra/launcher=slurm", "seed=0,1"], False),
    (["train", "-m", "--cfg", "job"], False),
    (["train", "-m", "--help"], False),
    (["report", "outputs/sweeps/x"], False),
])
def test_which_commands_run_their_jobs_here(argv: list[str], expected: bool) -> None:
    assert job_start.jobs_run_here(argv) is expected


def test_a_sweep_starts_its_zygote_before_importing_torch_and_uses_it(tmp_path: Path) -> None:
    """`vae-bench train -m` starts one zygote, before this process imports torch (the two
    imports overlap), and its jobs fork from that one: a second zygote would show up here."""
    code = (
        "import sys\n"
        "from vae_bench import command, zygote\n"
        "started = []\n"
        "original = zygote.Zygote.__init__\n"
        "def spy(self, *args, **kwargs):\n"
        "    started.append('torch' in sys.modules)\n"
        "    original(self, *args, **kwargs)\n"
        "zygote.Zygote.__init__ = spy\n"
        "try:\n"
        f"    command.main({['train', '-m', *TINY, 'seed=0,1', f'hydra.sweep.dir={tmp_path}']!r})\n"
        "finally:\n"
        "    print('zygotes started (torch imported then):', started)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=tmp_path, timeout=TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "zygotes started (torch imported then): [False]" in result.stdout, result.stdout
    forks = {line.split("forked by the zygote ")[1].strip()
             for log_file in tmp_path.glob("seed=*/train.log")
             for line in log_file.read_text().splitlines() if "forked by the zygote" in line}
    assert len(forks) == 1, forks


def test_a_stopped_zygote_exits_cleanly_and_removes_its_socket() -> None:
    """It ends with os._exit (no interpreter teardown, which took 3-4 s with torch loaded on a
    busy machine, before the sweep could exit), after its own clean-up."""
    started_zygote = zygote.Zygote(job_start.ZYGOTE_TARGET, ["json"],
                                   job_start.child_environment())
    folder = Path(started_zygote.folder)
    assert (folder / "socket").exists()
    started_zygote.stop()
    assert started_zygote.process.returncode == 0
    assert not folder.exists()


# ---- no thread pool before the fork ---------------------------------------------------------


def test_the_zygote_forks_only_while_it_is_one_thread(tmp_path: Path) -> None:
    """The zygote, after importing everything a job needs, is still one thread when it forks:
    no torch op and no library's thread pool has run in it. And it runs this vae_bench."""
    import vae_bench

    report = tmp_path / "parent_state"
    with started("zygote_targets:parent_state", job_start.ZYGOTE_PRELOAD) as process:
        assert process.fork([str(report)], zygote_env()).wait() == 0
    assert report.read_text() == f"1 True {vae_bench.__file__}"


def test_a_forked_job_imports_nothing_the_zygote_had_not(tmp_path: Path) -> None:
    """Whatever a job imports on first use (torch's compiler, when its optimizer is made, takes
    seconds) the zygote imported already: a job pays for no import."""
    from conftest import compose_config
    from omegaconf import OmegaConf

    run_dir, report = tmp_path / "run", tmp_path / "imports"
    run_dir.mkdir()
    OmegaConf.save(compose_config([*TINY, "trainer.epochs=1"]), run_dir / "config.yaml",
                   resolve=True)
    with started("zygote_targets:imports_of_a_job", job_start.ZYGOTE_PRELOAD) as process:
        child = process.fork([str(report), str(run_dir), "--quiet"], zygote_env())
        assert child.wait() == 0
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"
    assert report.read_text() == ""


def test_the_thread_check_refuses_a_fork_once_a_thread_pool_has_run() -> None:
    """The check the zygote makes before every fork sees torch's thread pools: it passes after
    the imports alone and fails once a parallel op has run."""
    code = ("import os, torch, vae_bench.train\n"
            "from vae_bench import zygote\n"
            "env = dict(os.environ)\n"
            "assert zygote.fork_refusal(env, env) is None, zygote.fork_refusal(env, env)\n"
            "torch.set_num_threads(2)\n"
            "torch.randn(512, 512) @ torch.randn(512, 512)\n"
            "print(zygote.fork_refusal(env, env))\n")
    env = {**zygote_env(), "OPENBLAS_NUM_THREADS": "1"}  # as the zygote loads numpy
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "threads: a thread pool has started" in done.stdout


def test_a_job_whose_load_time_environment_differs_is_refused(tmp_path: Path) -> None:
    with started("zygote_targets:parent_state") as process:
        with pytest.raises(zygote.ZygoteUnavailable, match="differs .* in OMP_NUM_THREADS"):
            process.fork([str(tmp_path / "x")], {**zygote_env(), "OMP_NUM_THREADS": "3"})


# ---- signals ----------------------------------------------------------------------------------


def test_signals_reach_a_forked_job_and_its_end_is_reported(tmp_path: Path) -> None:
    """SIGTERM to the waiting requester reaches the job (it checkpoints and exits); a job
    SIGKILLed is reported with its signal; a job whose requester goes away gets SIGTERM."""
    stopped, killed, orphan = (tmp_path / name for name in ("stopped", "killed", "orphan"))
    with started("zygote_targets:wait_for_sigterm") as process:
        child = process.fork([str(stopped)], zygote_env())
        with jobs.forwarding_stop_signals(child):
            wait_for(stopped)
            os.kill(os.getpid(), signal.SIGTERM)  # this process survives: it forwards it
            assert child.wait() == 7
        assert (tmp_path / "stopped.signal").read_text() == "SIGTERM"

        child = process.fork([str(killed)], zygote_env())
        wait_for(killed)
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait() == -signal.SIGKILL

        child = process.fork([str(orphan)], zygote_env())
        wait_for(orphan)
        child.channel.sock.close()  # as if the launcher's worker had died
        wait_for(tmp_path / "orphan.signal")
        assert (tmp_path / "orphan.signal").read_text() == "SIGTERM"


# ---- real sweeps ------------------------------------------------------------------------------


@pytest.mark.slow
def test_forked_and_fresh_jobs_train_bitwise_equal_with_two_threads(tmp_path: Path) -> None:
    """The same two jobs with 2 threads each (OpenMP's pool starts in the forked child, never in
    the zygote), forked by the zygote and started as fresh interpreters: equal results."""
    overrides = [*[o for o in TINY if not o.startswith("trainer.threads")],
                 "trainer.threads=2", "seed=0,1"]
    outputs = {}
    for start in ("zygote", "spawn"):
        sweep = tmp_path / start
        result = run_cli(["train", "-m", *overrides, f"hydra.sweep.dir={sweep}"], tmp_path,
                         env={job_start.JOB_START: start}, timeout=TIMEOUT)
        assert result.returncode == 0, result.stderr[-3000:]
        outputs[start] = sweep
    for seed in (0, 1):
        forked, fresh = (outputs[start] / f"seed={seed}" for start in ("zygote", "spawn"))
        assert "forked by the zygote" in (forked / "train.log").read_text()
        assert "a fresh interpreter" in (fresh / "train.log").read_text()
        for run in (forked, fresh):
            assert "device cpu, 2 CPU threads" in (run / "train.log").read_text()
        summaries = [json.loads((run / "summary.json").read_text()) for run in (forked, fresh)]
        assert summaries[0]["status"] == "completed" and summaries[0]["train/threads"] == 2
        assert without_timings(summaries[0]) == without_timings(summaries[1])
        metrics = [[without_timings(json.loads(line)) for line in
                    (run / "metrics.jsonl").read_text().splitlines()] for run in (forked, fresh)]
        assert metrics[0] == metrics[1] and len(metrics[0]) > 2


@pytest.mark.slow
def test_a_sweep_whose_zygote_dies_goes_on_and_ends(tmp_path: Path) -> None:
    """SIGKILL to the zygote while it holds a training job: that job is stopped by the kernel's
    SIGTERM and ends `interrupted` (or `killed`), the next job is forked by a new zygote, and
    the sweep ends with its closing line."""
    sweep = tmp_path / "sweep"
    proc = start_cli(["train", "-m", *TINY, "dataset.num_train=512", "trainer.batch_size=4",
                      "trainer.epochs=1", "seed=0,1,2", f"hydra.sweep.dir={sweep}"], tmp_path)
    target = sweep / "seed=1"
    zygote_pid = None
    deadline = time.monotonic() + TIMEOUT
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            summary = json.loads((target / "summary.json").read_text())
        except (OSError, ValueError):
            summary = {}
        if summary.get("status") == "running" and (target / "metrics.jsonl").is_file():
            stat = Path(f"/proc/{summary['pid']}/stat").read_text()
            zygote_pid = int(stat.rsplit(")", 1)[1].split()[1])
            assert "vae_bench.zygote" in Path(f"/proc/{zygote_pid}/cmdline").read_text()
            os.kill(zygote_pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert zygote_pid is not None, "the job never reached its training loop"
    assert proc.returncode == 0, err[-3000:]
    statuses = [json.loads((sweep / f"seed={s}" / "summary.json").read_text())["status"]
                for s in range(3)]
    assert statuses[0] == statuses[2] == "completed"
    assert statuses[1] in ("interrupted", "killed")
    assert f"the zygote {zygote_pid} has ended; starting another" in out + err
    log = (sweep / "seed=2" / "train.log").read_text()
    assert "forked by the zygote" in log and f"forked by the zygote {zygote_pid}" not in log
    assert closing_counts(out).startswith("3 jobs: 2 completed")


