"""Sweep jobs: each job trains in a child process, and the sweep says where it is and how it went.

A launcher worker (joblib's loky process, submitit's job process) runs the task function; if the
training itself ran in that process, the kernel's OOM killer (SIGKILL) would take the worker down
and joblib would abort every other job of the sweep. So in a multirun the task function starts
the training as a child (`python -m vae_bench.jobs <run folder> …`) and waits for it: a child
killed by a signal is recorded as `killed` in its summary.json and the sweep goes on. The child
reads the config the parent saved to the run folder, and its memory (data set, model, CUDA
context) goes back to the system when it exits, so a worker never accumulates jobs' data.

The child is a fork of the worker's zygote (zygote.py): a process the worker starts at its
first job, with its own environment, which imports torch and vae_bench once; every later job
then starts in milliseconds instead of seconds. Where there is no zygote (not Linux,
`VAE_BENCH_JOB_START=spawn`, or a zygote that refused or failed to start) the child is a fresh
interpreter, `python -m vae_bench.jobs`, as before.

Every job also appends one line to the sweep's journal (`JOURNAL`), from which `SweepProgress`
prints the sweep's closing line: how many jobs completed, diverged, failed, were interrupted or
killed.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import json
import logging
import os
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from vae_bench import zygote
from vae_bench.errors import USER_ERRORS, record_failure
from vae_bench.job_start import (
    ZYGOTE_PRELOAD,
    ZYGOTE_TARGET,
    child_environment,
    zygote_allowed,
)
from vae_bench.tracking import SUMMARY_FILE, atomic_write_text, tensorboard_hint

JOURNAL = ".vae_bench_jobs.jsonl"  # in the sweep folder; one line per job of the latest sweep
ENDINGS = ("completed", "diverged", "failed", "interrupted", "killed")
KEPT = "kept"  # the job's folder held a run it must not overwrite (see cli.EarlierRunKept)
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # as Hydra's job log
log = logging.getLogger("vae_bench")


# ---- the parent: the launcher's task function ----------------------------------------------


def read_summary(run_dir: Path) -> dict:
    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


@contextmanager
def forwarding_stop_signals(child: subprocess.Popen | zygote.ZygoteChild) -> Iterator[None]:
    """SIGINT/SIGTERM sent to the waiting parent (SLURM's time-limit warning goes to the job's
    process, not its children) reach the child, which checkpoints and ends `interrupted`."""
    def forward(signum, frame):
        with suppress(ProcessLookupError):
            child.send_signal(signum)

    previous = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, forward)
        except ValueError:  # not the main thread: the child still gets terminal signals itself
            pass
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class WorkerZygote:
    """This process's zygote, started at its first job and kept for the next ones."""

    current: zygote.Zygote | None = None
    failed = False  # it could not start: this process's jobs start as fresh interpreters

    @classmethod
    def fork(cls, args: list[str]) -> zygote.ZygoteChild:
        env = child_environment()
        if cls.current is not None and not cls.current.alive():
            log.warning("the zygote %d has ended; starting another", cls.current.pid)
            cls.stop()
        if cls.current is not None and (zygote.load_time_environment(cls.current.env)
                                        != zygote.load_time_environment(env)):
            cls.stop()  # e.g. OMP_NUM_THREADS set per job (hydra.job.env_set): not forkable
        if cls.current is None:
            try:
                cls.current = zygote.Zygote(ZYGOTE_TARGET, ZYGOTE_PRELOAD, env)
            except zygote.ZygoteUnavailable:
                cls.failed = True
                raise
            atexit.unregister(cls.stop)  # once is enough
            atexit.register(cls.stop)
        try:
            return cls.current.fork(args, env)
        except zygote.ZygoteUnavailable:
            if not cls.current.forks:  # its imports failed, or it refuses: no more tries
                cls.failed = True
                cls.stop()
            raise

    @classmethod
    def adopt(cls, early: zygote.Zygote) -> None:
        """Take a zygote started before this module was imported (job_start.start_early) as
        this process's; the first job then finds its imports done or under way."""
        if cls.current is not None:
            early.stop()
            return
        cls.current = early
        atexit.register(cls.stop)
        log.debug("jobs fork from the zygote %d, started with the command", early.pid)

    @classmethod
    def stop(cls) -> None:
        if cls.current is not None:
            cls.current.stop()
            cls.current = None


def start_child(run_dir: Path, attempt: str | None,
                quiet: bool) -> subprocess.Popen | zygote.ZygoteChild:
    """A fork of this process's zygote where it can have one, else a fresh interpreter."""
    args = [str(run_dir), "--attempt", attempt or "new", *(["--quiet"] if quiet else [])]
    if zygote_allowed() and not WorkerZygote.failed:
        try:
            return WorkerZygote.fork(args)
        except zygote.ZygoteUnavailable as error:
            log.warning("%s: %s; this job starts in a fresh process", run_dir, error)
    return subprocess.Popen([sys.executable, "-m", "vae_bench.jobs", *args,
                             "--parent", str(os.getpid())], env=child_environment())


def train_in_child(run_dir: Path, attempt: str | None, quiet: bool) -> dict:
    """Train the run whose config.yaml is in `run_dir` in a child process and return its
    summary; a child ended by a signal before it could write its end is marked `killed`."""
    child = start_child(run_dir, attempt, quiet)
    with forwarding_stop_signals(child):
        returncode = child.wait()
    summary = read_summary(run_dir)
    if summary.get("status") not in (None, "running"):
        return {**summary, "pid": summary.get("pid", child.pid)}
    if returncode is None:  # its zygote died first, and the kernel sent the child SIGTERM
        return mark_killed(run_dir, summary, child.pid, "unknown (its zygote ended first)")
    if returncode < 0:
        return mark_killed(run_dir, summary, child.pid, signal.Signals(-returncode).name)
    error = (f"the training process {child.pid} exited with code {returncode} without "
             "recording how the run ended; see train.log")
    log.error("%s: %s", run_dir, error)
    summary = {**summary, "status": "failed", "error": error}
    atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return {**summary, "pid": child.pid}


def mark_killed(run_dir: Path, summary: dict, pid: int, signal_name: str) -> dict:
    """The summary keeps the last values the run wrote (they are from its last epoch)."""
    summary = {**summary, "status": "killed", "signal": signal_name, "pid": pid,
               "host": socket.gethostname()}
    atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    log.error("%s: the training process %d was killed (%s; out of memory?); the sweep goes "
              "on. Run the same command with hydra.sweep.dir=%s to finish it, or "
              "`vae-bench resume %s`.", run_dir, pid, signal_name, run_dir.parent, run_dir)
    return summary


def record_job(sweep_dir: Path, run_dir: Path, summary: dict) -> None:
    """One line per job in the sweep's journal (appends of one short line do not interleave)."""
    line = {"job": run_dir.name, "status": summary.get("status"),
            "skipped": bool(summary.get("skipped")), "pid": summary.get("pid")}
    try:
        with open(sweep_dir / JOURNAL, "a") as handle:
            handle.write(json.dumps(line) + "\n")
    except OSError as error:  # the closing line then undercounts; the runs themselves are fine
        log.warning("could not record the job in %s: %s", sweep_dir / JOURNAL, error)


# ---- the child: one training run ------------------------------------------------------------


def stop_when_parent_dies(parent_pid: int) -> None:
    """If the parent is killed (joblib then aborts the sweep), SIGTERM the child too: it
    checkpoints and ends `interrupted` instead of training on, orphaned. Linux only."""
    pr_set_pdeathsig = 1
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM))
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:  # it died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


OOM_SCORE_BIAS = 100  # a tenth of the memory limit, in the kernel's badness units


def prefer_as_oom_victim() -> None:
    """Make the OOM killer pick this training process before its parent, the launcher's
    worker: with small data sets the two are of similar size (both hold PyTorch's libraries),
    and killing the worker would make joblib abort the whole sweep. Raising one's own score
    needs no privilege; Linux only."""
    path = Path("/proc/self/oom_score_adj")
    with suppress(OSError, ValueError):
        path.write_text(str(min(1000, int(path.read_text()) + OOM_SCORE_BIAS)))


def child_main(argv: list[str]) -> None:
    from vae_bench.train import train

    parser = argparse.ArgumentParser(prog="python -m vae_bench.jobs",
                                     description="one sweep job's training (internal)")
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--attempt", choices=("new", "resume", "start over"), default="new")
    parser.add_argument("--parent", type=int, default=None,
                        help="the process to end with (a zygote's fork has this set already)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if args.parent is not None:
        stop_when_parent_dies(args.parent)
    prefer_as_oom_victim()
    console = logging.StreamHandler(sys.stdout)
    console.setLevel(logging.WARNING if args.quiet else logging.INFO)
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, force=True,
                        handlers=[console, logging.FileHandler(args.run_dir / "train.log")])
    log.info("training process %d: %s", os.getpid(), "a fresh interpreter" if args.parent
             else f"forked by the zygote {os.getppid()}")
    # The parent saved the resolved config (or checked that an earlier attempt's is this one).
    # An attempt started under an older vae-bench saved fewer keys: the schema gives the rest
    # their defaults, which same_run_config took them to have.
    from vae_bench.config import load_run_config

    cfg = load_run_config(args.run_dir / "config.yaml")
    try:
        train(cfg, args.run_dir, resume=args.attempt == "resume", quiet=args.quiet,
              start_over=args.attempt == "start over")
    except USER_ERRORS as error:
        log.error("vae-bench: error: %s", error)
        record_failure(args.run_dir, error)
    except Exception:  # train() recorded it as failed; the traceback belongs in train.log
        log.exception("training failed")
        sys.exit(1)


# ---- the sweep's first and last lines -------------------------------------------------------


def sweep_folder(config: DictConfig) -> Path | None:
    try:
        return Path(os.path.abspath(str(config.hydra.sweep.dir)))
    except Exception:  # not resolvable: Hydra reports that itself
        return None


def read_journal(sweep_dir: Path) -> list[dict]:
    path = sweep_dir / JOURNAL
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line) for line in lines if line.strip()]


def closing_line(sweep_dir: Path, entries: list[dict]) -> str:
    counts = Counter(entry["status"] for entry in entries)
    parts = [f"{counts[ending]} {ending}" for ending in ENDINGS]
    parts += [f"{count} {status}" for status, count in sorted(counts.items())
              if status not in (*ENDINGS, KEPT)]
    line = f"vae-bench: sweep finished, {len(entries)} jobs: {', '.join(parts)}"
    notes = []
    skipped = sum(entry["skipped"] for entry in entries)
    if skipped:
        notes.append(f"{skipped} of them done before, skipped")
    if counts[KEPT]:
        notes.append(f"{counts[KEPT]} left untouched (their folders hold other runs)")
    line += f" ({'; '.join(notes)})" if notes else ""
    line += f"\nvae-bench: sweep folder: {sweep_dir}\n{tensorboard_hint(sweep_dir)}"
    if counts["interrupted"] + counts["killed"] + counts["failed"]:
        line += ("\nvae-bench: the same command with hydra.sweep.dir=<sweep folder> resumes "
                 "the interrupted and killed jobs and retries the failed ones")
    return line


class SweepProgress(Callback):
    """Prints the sweep folder when a multirun starts, and how its jobs ended when it ends.
    Printed, not logged: `log.quiet=true` hides the log but never these lines."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = sweep_folder(config)
        if folder is None:
            return
        with suppress(OSError):  # a folder that cannot be written is OutputDirCheck's message
            (folder / JOURNAL).unlink(missing_ok=True)  # count this sweep's jobs only
        print(f"vae-bench: sweep folder: {folder}", flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        folder = sweep_folder(config)
        if folder is not None:
            print(closing_line(folder, read_journal(folder)), flush=True)
        WorkerZygote.stop()  # the local launcher's, in this process (workers' end with them)


if __name__ == "__main__":
    child_main(sys.argv[1:])
