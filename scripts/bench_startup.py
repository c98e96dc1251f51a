#!/usr/bin/env python
"""What a sweep job costs beyond its own training: the start-up tax per job.
Run: `python scripts/bench_startup.py --help` for its options; examples below.

Runs real sweeps of tiny jobs (`vae-bench train -m …`, synthetic data, 256 images, 1 epoch of
2 steps, IWAE k=1, quiet) under the default launcher (`local`: Hydra's basic one, composing the
next job's config while a job trains), Hydra's `basic`, and joblib with n_jobs=1 and 2, and
reports, per sweep:

- wall per job: the sweep's wall time (command start to exit) divided by its jobs;
- training per job: the jobs' own training passes (`train/epoch_seconds_all` in each run's
  summary.json), averaged;
- overhead per job: the difference, i.e. everything that is not the jobs' training: the CLI's
  and Hydra's start, each job's set-up (process start, imports, data, model, TensorBoard
  writers), its evaluation and checkpoint, and the sweep's own bookkeeping;
- steady overhead per job: the same from the first job's end to the last job's end, which leaves
  out the sweep's one-time start (the CLI's imports, the zygote's);
- where each job's time goes (PHASES below), medians from the log lines' times: the parent's
  set-up of a job, the process start, the job's own set-up and run, the hand-off to the next.

`--code DIR …` runs the same sweeps with other checkouts of vae-bench (PYTHONPATH=DIR), taking
turns launcher by launcher, so that before and after share the machine's load; each sweep also
records how many cores other processes kept busy meanwhile.

    export VAE_BENCH_DATA=../shared/data
    python scripts/bench_startup.py                                   # 40 jobs, 3 launchers
    python scripts/bench_startup.py --jobs 16 --launchers local,basic # the issue's 16 tiny jobs
    git worktree add --detach ../before 54f8a82                       # before the zygote
    python scripts/bench_startup.py --code ../before . --out startup.json   # before vs after
    python scripts/bench_startup.py --launchers local --code ../before . -- \\
        experiment=lr_stability param=logvar optim=sgd,adam optim.lr=0.01,0.1,1,10 seed=0 \\
        log.quiet=true                                                # a subset of a study
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import load_now, machine_info, write_json  # noqa: E402

TINY_JOB = ["dataset=synthetic", "dataset.num_train=256", "dataset.num_test=256",
            "trainer.epochs=1", "eval.iwae_k=1", "log.quiet=true", "trainer.threads=1"]
# `local` is the default (whatever the checkout's default launcher is: Hydra's basic one before
# vae-bench had its own); `basic` names Hydra's.
LAUNCHERS = {"local": [], "basic": ["hydra/launcher=basic"],
             "joblib1": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=1"],
             "joblib2": ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]}
TIMEOUT = 3600  # one sweep; the old start-up took up to ~7 s a job on this 2-core machine


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=40, help="jobs per sweep (seeds 0..N-1)")
    parser.add_argument("--launchers", default="local,joblib1,joblib2",
                        help=f"comma-separated, from {', '.join(LAUNCHERS)}")
    parser.add_argument("--code", nargs="+", type=Path, default=[Path(__file__).parents[1]],
                        help="checkouts of vae-bench to compare (default: this one)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument("--keep", type=Path, default=None, help="keep the sweeps under here")
    parser.add_argument("sweep", nargs="*",
                        help="overrides replacing the tiny job and its seeds (after `--`)")
    args = parser.parse_args(argv)
    unknown = set(args.launchers.split(",")) - set(LAUNCHERS)
    if unknown:
        parser.error(f"--launchers: {', '.join(sorted(unknown))} unknown; "
                     f"choose from {', '.join(LAUNCHERS)}")
    return args


def busy_cpu_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (Linux /proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    times = os.times()  # children count once they have been waited for
    return times.user + times.system + times.children_user + times.children_system


def without_timings(summary: dict) -> dict:
    """What a job computed: its summary less clocks and the process that ran it."""
    return {key: value for key, value in summary.items() if "seconds" not in key
            and "examples_per_s" not in key and key not in ("pid", "host")}


LOG_TIME = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]")
PHASES = {  # where a job's wall time goes, from the log lines' times (milliseconds)
    "parent_setup": "the launcher's line for the job to its `run folder` line: Hydra composes "
                    "the job's config and saves it, vae-bench checks it (local, basic only)",
    "process_start": "`run folder` to the training process's first line (fork or interpreter)",
    "child_setup": "the process's first line to its `data:` line: logging, config, data",
    "run": "`data:` to summary.json's last write: training, evaluation, diagnostics, checkpoint",
    "handoff": "summary.json's last write to the launcher's line for the next job: the process "
               "exits, the parent records the job (local, basic only)",
}


def log_time(line: str) -> float | None:
    match = LOG_TIME.match(line)
    if not match:
        return None
    return datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()


def phases(stdout: str, sweep_dir: Path, sequential: bool) -> dict[str, float]:
    """Median seconds per job in each of PHASES, from the sweep's console and its train.logs."""
    launches = [log_time(line) for line in stdout.splitlines() if "][HYDRA] \t#" in line]
    jobs = []
    for log_file in sweep_dir.glob("*/train.log"):
        marks = {}
        for line in log_file.read_text().splitlines():
            for key, text in (("folder", "run folder: "), ("process", "training process "),
                              ("data", "][INFO] - data: ")):
                if text in line and key not in marks:
                    marks[key] = log_time(line)
        marks["end"] = (log_file.parent / "summary.json").stat().st_mtime
        if None not in marks.values() and len(marks) == 4:
            jobs.append(marks)
    jobs.sort(key=lambda marks: marks["folder"])
    spans: dict[str, list[float]] = {name: [] for name in PHASES}
    for index, marks in enumerate(jobs):
        spans["process_start"].append(marks["process"] - marks["folder"])
        spans["child_setup"].append(marks["data"] - marks["process"])
        spans["run"].append(marks["end"] - marks["data"])
        if sequential and len(launches) == len(jobs):
            spans["parent_setup"].append(marks["folder"] - launches[index])
            if index + 1 < len(jobs):
                spans["handoff"].append(launches[index + 1] - marks["end"])
    return {name: round(statistics.median(values), 3) for name, values in spans.items() if values}


def run_sweep(code: Path, launcher: str, overrides: list[str], sweep_dir: Path) -> dict:
    # Run from the checkout itself: `python -m` puts the working folder first on sys.path.
    env = {**os.environ, "PYTHONPATH": str(code.resolve()), "PYTHONUNBUFFERED": "1"}
    if "VAE_BENCH_DATA" in env:
        env["VAE_BENCH_DATA"] = os.path.abspath(env["VAE_BENCH_DATA"])
    command = [sys.executable, "-m", "vae_bench", "train", "-m", *overrides,
               *LAUNCHERS[launcher], f"hydra.sweep.dir={sweep_dir}"]
    busy0, own0, start = busy_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    done = subprocess.run(command, env=env, cwd=code.resolve(), capture_output=True, text=True,
                          timeout=TIMEOUT)
    wall = time.perf_counter() - start
    busy1, own1 = busy_cpu_seconds(), own_cpu_seconds()
    if done.returncode != 0:
        raise SystemExit(f"the sweep failed ({code}, {launcher}):\n{done.stderr[-3000:]}")
    summaries = [(path.stat().st_mtime, json.loads(path.read_text()))
                 for path in sorted(sweep_dir.glob("*/summary.json"))]
    statuses = sorted({s["status"] for _, s in summaries})
    training = [sum(s.get("train/epoch_seconds_all", [])) for _, s in summaries]
    ends = sorted(mtime for mtime, _ in summaries)
    jobs = len(summaries)
    result = {"code": str(code), "launcher": launcher, "jobs": jobs, "statuses": statuses,
              "results": {path.parent.name: without_timings(json.loads(path.read_text()))
                          for path in sorted(sweep_dir.glob("*/summary.json"))},
              "wall_seconds": round(wall, 2), "wall_per_job": round(wall / jobs, 3),
              "training_per_job": round(statistics.mean(training), 4),
              "overhead_per_job": round(wall / jobs - statistics.mean(training), 3),
              "load_1min_after": load_now()[0]}
    result["phases"] = phases(done.stdout + done.stderr, sweep_dir,
                              sequential=launcher in ("local", "basic"))
    if jobs > 1:
        steady = (ends[-1] - ends[0]) / (jobs - 1)
        result["steady_overhead_per_job"] = round(steady - statistics.mean(training), 3)
    if busy0 is not None:
        result["other_cores"] = round(max(0.0, (busy1 - busy0) - (own1 - own0)) / wall, 2)
    return result


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    overrides = args.sweep or [*TINY_JOB, f"seed={','.join(map(str, range(args.jobs)))}"]
    print(f"load before: {load_now()}; sweep: {' '.join(overrides)}", flush=True)
    results = []
    with tempfile.TemporaryDirectory() as scratch:
        root = (args.keep or Path(scratch)).resolve()
        for launcher in args.launchers.split(","):
            for turn, code in enumerate(args.code):  # before and after back to back
                sweep_dir = root / f"{launcher}_{turn}"
                result = run_sweep(code, launcher, overrides, sweep_dir)
                results.append(result)
                steady = result.get("steady_overhead_per_job", float("nan"))
                print(f"{launcher:8} {str(code):32} {result['jobs']:3} jobs "
                      f"{result['statuses']}: wall {result['wall_seconds']:7.1f} s, "
                      f"{result['wall_per_job']:6.3f} s/job, training "
                      f"{result['training_per_job']:.4f} s/job, overhead "
                      f"{result['overhead_per_job']:6.3f} s/job (steady {steady:6.3f}), "
                      f"other cores busy {result.get('other_cores')}", flush=True)
                print("         median per job: " + ", ".join(
                    f"{name} {value:.3f} s" for name, value in result["phases"].items()),
                    flush=True)
    for launcher in args.launchers.split(","):
        runs = [r for r in results if r["launcher"] == launcher]
        same = all(r["results"] == runs[0]["results"] for r in runs[1:])
        if len(runs) > 1:
            print(f"{launcher}: every job's results bitwise equal across the checkouts: {same}")
    print(f"load after: {load_now()}")
    write_json(args.out, {"sweep": overrides, "machine": machine_info(), "results": results})
    return results


if __name__ == "__main__":
    main()
