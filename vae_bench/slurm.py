"""The `hydra/launcher=slurm` preset's launcher: Hydra's submitit launcher, with bounded waits.

submitit waits for a job's result by polling `sacct`. Without an accounting database sacct
answers nothing and the wait never ends; with one, a job that died without a result (its
worker SIGKILLed by OverMemoryKill, a lost node, an admin) ends the whole sweep with submitit's
UncompletedJobError traceback. Here the sweep asks `squeue`, which answers without accounting
(ended jobs stay listed for MinJobAge, 300 s by default), and every wait has a bound:

- a job whose result file exists is done;
- a job that squeue lists as ended, or no longer lists, gets RESULT_GRACE_S for its result file
  to appear (a shared file system can lag); after that its run is recorded `killed` (if its
  training had not written its own end) and counted in the sweep's closing line;
- a job pending for a reason that never passes (PartitionConfig: more than any node has) is
  cancelled and counted `failed`;
- if squeue stops answering for QUEUE_SILENCE_S, the sweep stops waiting and says which jobs it
  could not follow.

As each job ends, its own warning and error lines (skipped, resumed, killed, interrupted) are
copied from its submitit log to the terminal. Before anything is submitted, `check_launcher`
(called by preflight) refuses a time limit too short for the stop warning, and CPUs, memory or
GPUs that no node of the partition has; `gpus_per_node: null` follows trainer.device.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import DictConfig, OmegaConf, open_dict

from vae_bench import jobs
from vae_bench.config import ConfigError
from vae_bench.tracking import SUMMARY_FILE, atomic_write_text

RESULT_GRACE_S = 15.0  # as long as submitit itself waits for a result file after a job ends
QUEUE_SILENCE_S = 600.0  # squeue failing this long: stop waiting rather than poll forever
POLL_MAX_S = 15.0  # squeue is asked at most this often once jobs have run a while
COMMAND_TIMEOUT_S = 60  # one squeue/sinfo call
# squeue states after which a job holds no process any more.
ENDED_STATES = {"BOOT_FAIL", "CANCELLED", "COMPLETED", "DEADLINE", "FAILED", "NODE_FAIL",
                "OUT_OF_MEMORY", "PREEMPTED", "TIMEOUT", "REVOKED", "SPECIAL_EXIT"}
# Reasons squeue gives for a pending job that will never start as submitted.
NEVER_STARTS = {"BadConstraints", "DependencyNeverSatisfied", "InvalidAccount", "InvalidQOS",
                "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit"}
SLURM_WARNING_MARGIN_S = 60  # SLURM may send `--signal` up to 60 s earlier than asked
JOB_LINE = re.compile(r"\]\[vae_bench(\.\w+)*\]\[(WARNING|ERROR)\]")

LAUNCHER_TARGET = "hydra_plugins.vae_bench_launcher.slurm_launcher.SlurmLauncher"


# ---- checks before sbatch runs (preflight) --------------------------------------------------


def warning_seconds(launcher: DictConfig) -> tuple[str, int]:
    """The stop warning as sbatch's `--signal` gets it, and its seconds before the limit."""
    extra = launcher.get("additional_parameters") or {}
    if "signal" in extra:
        text = str(extra["signal"])
        seconds = int(text.split("@", 1)[1]) if "@" in text else 60  # sbatch's default
        return f"hydra.launcher.additional_parameters.signal={text}", seconds
    seconds = int(launcher.get("signal_delay_s") or 0)
    return f"hydra.launcher.signal_delay_s={seconds}", seconds


def check_time_limit(launcher: DictConfig) -> None:
    timeout_min = launcher.get("timeout_min")
    if timeout_min is None:
        return
    warning, seconds = warning_seconds(launcher)
    # Room for the warning, SLURM's margin, and a minute of training before it.
    least = math.ceil((seconds + SLURM_WARNING_MARGIN_S) / 60) + 1
    if timeout_min < least:
        raise ConfigError(
            f"hydra.launcher.timeout_min={timeout_min} is too short for the stop warning "
            f"{warning} ({seconds} s before the limit, which SLURM may send up to "
            f"{SLURM_WARNING_MARGIN_S} s early): the run would be killed without checkpointing. "
            f"Set hydra.launcher.timeout_min to at least {least}.")


def run_command(command: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)


@dataclass(frozen=True)
class Node:
    """One line of `sinfo`: a group of nodes alike in CPUs, memory and GRES."""

    cpus: int
    memory_mb: int
    gres: str


def partition_nodes(partition: str | None) -> list[Node]:
    """The nodes of the partition (the default one if None), as sinfo lists them."""
    if shutil.which("sinfo") is None:
        raise ConfigError("hydra/launcher=slurm needs SLURM's commands (sinfo, sbatch, squeue) "
                          "on this machine, a cluster's login node; sinfo is not on PATH.")
    command = ["sinfo", "--noheader", "--format=%c|%m|%G"]
    if partition:
        command.append(f"--partition={partition}")
    try:
        answer = run_command(command)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"`{' '.join(command)}` did not answer within "
                          f"{COMMAND_TIMEOUT_S} s; is the cluster's controller up?") from None
    if answer.returncode != 0:
        raise ConfigError(f"`{' '.join(command)}` failed: {answer.stderr.strip()}")
    nodes = []
    for line in answer.stdout.splitlines():
        cpus, memory, gres = (line.strip().split("|") + ["", "", ""])[:3]
        with suppress(ValueError):  # "2+" where sinfo summarizes unlike nodes: a lower bound
            nodes.append(Node(int(cpus.rstrip("+")), int(memory.rstrip("+")), gres))
    if not nodes:
        raise ConfigError(f"hydra.launcher.partition={partition}: SLURM lists no nodes in it "
                          "(`sinfo --summarize` lists the partitions).")
    return nodes


def where(partition: str | None) -> str:
    return f"partition {partition}" if partition else "the cluster's default partition"


def gpus_per_node(launcher: DictConfig, device: str, nodes: list[Node] | None = None) -> int:
    """GPUs per run: hydra.launcher.gpus_per_node if set; null follows trainer.device (cpu: 0,
    cuda: 1, auto: 1 where the partition has GPUs, else 0)."""
    partition = launcher.get("partition")
    requested = launcher.get("gpus_per_node")
    if requested is None and device == "cpu":
        return 0
    nodes = nodes if nodes is not None else partition_nodes(partition)
    has_gpus = any("gpu" in node.gres for node in nodes)
    if requested is None:
        if device == "auto":
            return 1 if has_gpus else 0
        requested = 1
    if requested > 0 and not has_gpus:
        why = (f"hydra.launcher.gpus_per_node={requested}" if launcher.get("gpus_per_node")
               else f"trainer.device={device}")
        raise ConfigError(f"{why} asks for a GPU, but no node of {where(partition)} has one "
                          "(sinfo lists no gpu GRES): use trainer.device=cpu (or auto), or "
                          "another hydra.launcher.partition.")
    return int(requested)


def check_fits(launcher: DictConfig, nodes: list[Node]) -> None:
    """A task asking for more CPUs or memory than any node has would pend forever."""
    partition = launcher.get("partition")
    most_cpus = max(node.cpus for node in nodes)
    most_memory_mb = max(node.memory_mb for node in nodes)
    cpus, mem_gb = launcher.get("cpus_per_task"), launcher.get("mem_gb")
    if cpus is not None and cpus > most_cpus:
        raise ConfigError(f"hydra.launcher.cpus_per_task={cpus} is more than any node of "
                          f"{where(partition)} has ({most_cpus} CPUs; sinfo): set "
                          f"hydra.launcher.cpus_per_task={most_cpus} or less, and "
                          "trainer.threads to match.")
    if mem_gb is not None and mem_gb * 1024 > most_memory_mb:
        raise ConfigError(f"hydra.launcher.mem_gb={mem_gb} is more than any node of "
                          f"{where(partition)} has ({most_memory_mb} MB; sinfo): set "
                          f"hydra.launcher.mem_gb={most_memory_mb // 1024} or less.")


def check_launcher(cfg: DictConfig) -> None:
    """For a sweep composed with hydra/launcher=slurm: what would make sbatch refuse the sweep,
    its tasks pend forever, or SLURM kill its runs without warning, as a ConfigError before
    anything is submitted."""
    launcher = cfg.hydra.launcher
    if launcher.get("_target_") != LAUNCHER_TARGET:
        return
    check_time_limit(launcher)
    nodes = partition_nodes(launcher.get("partition"))
    check_fits(launcher, nodes)
    gpus_per_node(launcher, str(cfg.trainer.device), nodes)


# ---- the launcher ---------------------------------------------------------------------------


def launch(launcher: Any, job_overrides: Sequence[Sequence[str]],
           initial_job_idx: int) -> list[JobReturn]:
    """The plugin launcher's `launch`: submit the sweep as one array job, as Hydra's submitit
    launcher does, and wait for it as the module docstring says."""
    import submitit

    config, params = launcher.config, dict(launcher.params)
    params["gpus_per_node"] = gpus_per_node(OmegaConf.create(params), str(config.trainer.device))
    executor = submitit.AutoExecutor(cluster="slurm", folder=params.pop("submitit_folder"),
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    params.pop("_target_", None)
    shared = set(OmegaConf.structured(BaseQueueConf).keys())  # the rest are slurm_<key>
    executor.update_parameters(**{key if key in shared else f"slurm_{key}": value
                                  for key, value in params.items()})
    sweep_dir = Path(os.path.abspath(str(config.hydra.sweep.dir)))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if "mode" in config.hydra.sweep:
        os.chmod(sweep_dir, mode=int(str(config.hydra.sweep.mode), 8))
    job_params = []
    for number, overrides in enumerate(job_overrides, start=initial_job_idx):
        jobs.log.info("\t#%d : %s", number, " ".join(filter_overrides(overrides)))
        job_params.append((list(overrides), "hydra.sweep.dir", number, f"job_id_for_{number}",
                           Singleton.get_state()))
    try:
        submitted = executor.map_array(launcher, *zip(*job_params))
    except submitit.core.utils.FailedJobError as error:  # sbatch refused: in its own words
        lines = str(error).strip().splitlines()
        print(f"vae-bench: error: sbatch refused the sweep: {lines[-1] if lines else error}",
              file=sys.stderr)
        sys.exit(2)
    print(f"vae-bench: submitted {len(submitted)} jobs as SLURM array "
          f"{submitted[0].job_id.split('_')[0]}", flush=True)

    def run_dir_of(index: int) -> Path:
        """The folder job `index` trains in, as Hydra's run_job names it on the node (asked
        only of jobs that never returned: composing a job's config takes a while)."""
        config = launcher.hydra_context.config_loader.load_sweep_config(
            launcher.config, list(job_overrides[index]))
        with open_dict(config.hydra.job):
            config.hydra.job.num = initial_job_idx + index
        return sweep_dir / str(config.hydra.sweep.subdir)

    return watch(submitted, run_dir_of, job_overrides, sweep_dir)


# ---- waiting for the jobs -------------------------------------------------------------------


def queue_states(array_ids: set[str]) -> dict[str, tuple[str, str]] | None:
    """squeue's state and reason of every task of these arrays ("123_4" -> ("PENDING",
    "Priority")); None if squeue did not answer. A purged array (ended more than MinJobAge ago)
    is simply absent."""
    command = ["squeue", "--noheader", "--array", "--states=all", "--format=%i|%T|%r",
               f"--jobs={','.join(sorted(array_ids))}"]
    try:
        answer = run_command(command)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if answer.returncode != 0:
        return {} if "Invalid job id" in answer.stderr else None
    states = {}
    for line in answer.stdout.splitlines():
        task, state, reason = (line.strip().split("|") + ["", ""])[:3]
        states[task] = (state, reason)
    return states


def echo_job_lines(job: Any) -> None:
    """Print the job's own warning and error lines from its submitit log (its stdout holds
    Hydra's and the training's log lines)."""
    try:
        lines = Path(job.paths.stdout).read_text(errors="replace").splitlines()
    except OSError:  # no log (the job never started): the caller's line says what happened
        return
    for line in lines:
        if JOB_LINE.search(line):
            print(line, flush=True)


def watch(submitted: list, run_dir_of: Callable[[int], Path],
          job_overrides: Sequence[Sequence[str]], sweep_dir: Path) -> list[JobReturn]:
    """Wait for every job, each wait bounded (see the module docstring)."""
    returns: dict[int, JobReturn] = {}
    ended_since: dict[int, float] = {}
    array_ids = {job.job_id.split("_")[0] for job in submitted}
    start = last_answer = time.monotonic()
    while len(returns) < len(submitted):
        states = queue_states(array_ids)
        now = time.monotonic()
        if states is not None:
            last_answer = now
        for index, job in enumerate(submitted):
            if index in returns:
                continue
            overrides = list(job_overrides[index])
            if Path(job.paths.result_pickle).exists():
                returns[index] = with_result(job, overrides, run_dir_of, index, sweep_dir)
                continue
            if states is None:
                continue
            state, reason = states.get(job.job_id, (None, ""))
            if state == "PENDING" and never_starts(reason):
                returns[index] = cancelled(job, reason, overrides, run_dir_of(index), sweep_dir)
                continue
            if state is not None and state not in ENDED_STATES:
                continue
            ended_since.setdefault(index, now)
            if now - ended_since[index] >= RESULT_GRACE_S:
                returns[index] = without_result(job, state, overrides, run_dir_of(index),
                                                sweep_dir)
        if len(returns) == len(submitted):
            break
        if now - last_answer > QUEUE_SILENCE_S:
            for index, job in enumerate(submitted):
                if index not in returns:
                    returns[index] = lost(job, list(job_overrides[index]),
                                          run_dir_of(index), sweep_dir)
            break
        # As submitit does: often at first (short jobs), then every POLL_MAX_S.
        time.sleep(min(POLL_MAX_S, max(1.0, (now - start) / 10)))
    return [returns[index] for index in range(len(submitted))]


def never_starts(reason: str) -> bool:
    """Whether SLURM says a pending job can never start as asked (not merely: not yet)."""
    return reason in NEVER_STARTS or reason.endswith("PerJobLimit")


def cancelled(job: Any, reason: str, overrides: list[str], run_dir: Path,
              sweep_dir: Path) -> JobReturn:
    with suppress(OSError, subprocess.TimeoutExpired):
        run_command(["scancel", job.job_id])
    print(f"vae-bench: {run_dir}: SLURM will never start job {job.job_id} as asked (pending, "
          f"reason {reason}: more CPUs, memory, time or GPUs than the partition allows), so it "
          "is cancelled. Change hydra.launcher.* and run the same command with "
          f"hydra.sweep.dir={sweep_dir}.", flush=True)
    jobs.record_job(sweep_dir, run_dir, {"status": "failed"})
    return job_return(overrides, run_dir)


def job_return(overrides: list[str], run_dir: Path, value: Any = None) -> JobReturn:
    ended = JobReturn(overrides=overrides, working_dir=str(run_dir), task_name="train",
                      status=JobStatus.COMPLETED)
    ended.return_value = value
    return ended


def with_result(job: Any, overrides: list[str], run_dir_of: Callable[[int], Path], index: int,
                sweep_dir: Path) -> JobReturn:
    echo_job_lines(job)
    try:
        return job.results()[0]
    except Exception as error:  # the task itself raised: not a vae-bench job outcome
        run_dir = run_dir_of(index)
        last = str(error).strip().splitlines()
        reason = last[-1] if last else type(error).__name__
        print(f"vae-bench: {run_dir}: the job's worker raised an error ({reason}); see "
              f"{job.paths.stderr}", flush=True)
        jobs.record_job(sweep_dir, run_dir, {"status": "failed"})
        return job_return(overrides, run_dir)


def without_result(job: Any, state: str | None, overrides: list[str], run_dir: Path,
                   sweep_dir: Path) -> JobReturn:
    """The job ended and its worker never returned: it was killed (SIGKILL, out of memory,
    node lost). Its training may have written its own end (interrupted) before it went."""
    echo_job_lines(job)
    summary = jobs.read_summary(run_dir)
    how = f"ended {state}" if state else "is gone from SLURM's queue"
    if summary.get("status") in (None, "running"):
        summary = {**summary, "status": "killed", "slurm_job": job.job_id,
                   "slurm_state": state or "gone"}
        if (run_dir / "config.yaml").is_file():  # else it never started: nothing to mark
            atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    print(f"vae-bench: {run_dir}: its SLURM job {job.job_id} {how} without returning (its "
          f"worker was killed: over its memory, scancel --signal=KILL, a lost node); recorded "
          f"as {summary['status']}. Run the same command with hydra.sweep.dir={sweep_dir} to "
          f"finish it. submitit's log: {job.paths.stdout}", flush=True)
    jobs.record_job(sweep_dir, run_dir, summary)
    return job_return(overrides, run_dir)


def lost(job: Any, overrides: list[str], run_dir: Path, sweep_dir: Path) -> JobReturn:
    print(f"vae-bench: {run_dir}: squeue has not answered for {QUEUE_SILENCE_S:.0f} s, so the "
          f"sweep stops waiting for SLURM job {job.job_id}; it may still run. Later, the same "
          f"command with hydra.sweep.dir={sweep_dir} finishes what it left.", flush=True)
    jobs.record_job(sweep_dir, run_dir, {"status": "unknown"})
    return job_return(overrides, run_dir)
