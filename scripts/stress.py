#!/usr/bin/env python3
"""Stress the trainer's fault handling and print what each run ended as.

    python scripts/stress.py [--out DIR] [--skip-sweeps] [--fuzz N [--fuzz-only]]

1. Every σ-parameterization at SGD lr=1.0, with trainer.on_nonfinite=stop and =skip, as one
   multirun: each run must end `diverged` or `completed`, never `failed` (a crash).
2. 4-job sweeps (joblib with n_jobs=2, submitit_local) in which one job's training process (the
   job's largest) gets SIGTERM or SIGKILL: the sweep must go on and exit 0, the other 3 jobs
   complete, the report list the hit job as interrupted or killed, and the same command run
   again finish it and leave the others untouched. Last, SIGKILL to the joblib worker waiting
   for that job's training: joblib aborts the sweep (TerminatedWorkerError), the training
   process gets SIGTERM (it must not train on, orphaned) and ends interrupted, and the same
   command again must finish the sweep.
3. A run SIGKILLed mid-epoch and resumed: its metrics.jsonl must hold no duplicate (step, tag)
   pairs, and its final metrics must equal those of an uninterrupted run.
4. With --fuzz N: N override sets drawn from the schema (tests/fuzzing.py) must each be accepted
   or refused as a user error (exit 2) whose message names a key; up to --fuzz-train of the
   accepted ones are trained and must end `completed` or `diverged`.

Exits non-zero when an expectation above does not hold. Uses synthetic data only.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PARAMS = ("logvar", "logstd", "softplus_std", "softplus_var", "soft_clamped_logvar",
          "sigmoid_bounded", "natural")
SMALL = ["dataset=synthetic", "dataset.num_train=512", "dataset.num_test=128", "eval.iwae_k=5",
         "log.quiet=true", "trainer.threads=1"]
TIMINGS = {"train/epoch_seconds", "train/epoch_seconds_all", "train/examples_per_s",
           "eval/iwae_seconds"}


def vae_bench(args: list[str], cwd: Path, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "vae_bench", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def summary_of(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def records_of(run_dir: Path) -> list[dict]:
    records = []
    path = run_dir / "metrics.jsonl"
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            records.append(json.loads(line))
        except ValueError:  # a line being written
            pass
    return records


def report_statuses(sweep: Path) -> dict[str, str] | None:
    """run -> status as `vae-bench report` lists them, or None without a report command."""
    import csv
    import importlib.util

    if importlib.util.find_spec("vae_bench.report") is None:
        return None
    proc = vae_bench(["report", str(sweep)], sweep)
    _, err = proc.communicate()
    if proc.returncode != 0:
        return {"<report failed>": err.strip().splitlines()[-1] if err.strip() else "?"}
    with open(sweep / "report.csv") as handle:
        return {row["run"]: row["status"] for row in csv.DictReader(handle)}


def parameterizations_at_lr_1(out: Path) -> bool:
    print("\n== 1. every parameterization at SGD lr=1.0 ==")
    sweep = out / "lr1"
    proc = vae_bench(["train", "-m", *SMALL, "trainer.epochs=2", "optim=sgd", "optim.lr=1.0",
                      f"param={','.join(PARAMS)}", "trainer.on_nonfinite=stop,skip",
                      f"hydra.sweep.dir={sweep}"], out)
    _, err = proc.communicate()
    print(f"sweep exit code {proc.returncode}")
    ok = proc.returncode == 0
    print(f"{'run':52} {'status':10} {'step':>5} {'diverged at':>11}  reason")
    for run_dir in sorted(p.parent for p in sweep.rglob("summary.json")):
        s = summary_of(run_dir)
        reason = s.get("reason") or s.get("error") or ""
        at = f"{s.get('diverged_step', '')}" + (f" (ep {s['diverged_epoch']})"
                                                 if "diverged_epoch" in s else "")
        print(f"{run_dir.name:52} {s.get('status', '?'):10} {s.get('step', ''):>5} {at:>11}  "
              f"{reason}")
        ok &= s.get("status") in ("diverged", "completed")
    if proc.returncode != 0:
        print(err[-2000:])
    print("report:", report_statuses(sweep))
    return ok


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def parent_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def signalled_sweep(out: Path, launcher: str, signum: int, target: str) -> bool:
    """A 4-job sweep in which `target` ("training": the job's training process, its largest;
    "worker": the launcher's process that waits for it) of job seed=1 gets `signum`, then the
    same command again. The other 3 jobs must complete untouched, the report must list the hit
    job as interrupted or killed, and the rerun must finish it."""
    name = signal.Signals(signum).name
    print(f"\n== 2. {launcher} sweep, {name} to the {target} process of job seed=1 ==")
    sweep = out / f"{launcher}_{name.lower()}_{target}"
    command = ["train", "-m", *SMALL, "dataset.num_train=256", "trainer.epochs=1",
               "trainer.batch_size=4", "log.every_steps=4", "seed=0,1,2,3",
               f"hydra/launcher={launcher}", f"hydra.sweep.dir={sweep}"]
    if launcher == "joblib":
        command.append("hydra.launcher.n_jobs=2")
    proc = vae_bench(command, out)
    hit = sweep / "seed=1"
    while proc.poll() is None:
        summary = summary_of(hit)
        if summary.get("status") == "running" and records_of(hit):  # inside the training loop
            training = summary["pid"]
            victim = training if target == "training" else parent_of(training)
            print(f"RSS at the signal: training process {rss_mib(training):.0f} MiB, its parent "
                  f"(the launcher's worker) {rss_mib(parent_of(training)):.0f} MiB")
            os.kill(victim, signum)
            break
        time.sleep(0.02)
    output, err = proc.communicate()
    statuses = {seed: summary_of(sweep / f"seed={seed}").get("status", "<no summary>")
                for seed in range(4)}
    print(f"sweep exit code {proc.returncode}; statuses {statuses}")
    closing = [line for line in output.splitlines() if "sweep finished" in line]
    print("closing line:", closing[0] if closing else "<none: the launcher aborted the sweep>")
    if proc.returncode != 0:
        print("  " + (err.strip().splitlines() or ["?"])[-1][:300])
    reported = report_statuses(sweep)
    print("report:", reported)
    others_kept = all(statuses[seed] == "completed" for seed in (0, 2, 3))
    expected_exit = 0 if target == "training" else proc.returncode  # joblib aborts on a lost worker
    ok = (proc.returncode == expected_exit and reported.get("seed=1") in ("interrupted", "killed")
          and (others_kept or target == "worker"))
    finished = {seed: (sweep / f"seed={seed}" / "metrics.jsonl").read_text()
                for seed in (0, 2, 3) if statuses[seed] == "completed"}
    rerun = vae_bench(command, out)
    output, _ = rerun.communicate()
    statuses = {seed: summary_of(sweep / f"seed={seed}").get("status", "<no summary>")
                for seed in range(4)}
    closing = [line for line in output.splitlines() if "sweep finished" in line]
    print(f"same command again: exit code {rerun.returncode}; statuses {statuses}")
    print("closing line:", closing[0] if closing else "<none>")
    untouched = all((sweep / f"seed={seed}" / "metrics.jsonl").read_text() == text
                    for seed, text in finished.items())
    return (ok and rerun.returncode == 0 and untouched
            and all(status == "completed" for status in statuses.values()))


def killed_and_resumed(out: Path) -> bool:
    print("\n== 3. SIGKILL mid-epoch, then resume ==")
    args = [*SMALL, "trainer.epochs=3", "trainer.batch_size=8", "log.every_steps=8"]
    baseline = vae_bench(["train", *args, f"hydra.run.dir={out / 'uninterrupted'}"], out)
    run_dir = out / "killed"
    proc = vae_bench(["train", *args, f"hydra.run.dir={run_dir}"], out)
    while proc.poll() is None:
        s = summary_of(run_dir)
        if s.get("epoch", 0) >= 1 and max((r["step"] for r in records_of(run_dir)),
                                           default=0) > s["step"]:
            proc.kill()
            break
        time.sleep(0.02)
    proc.communicate()
    print(f"killed: exit code {proc.returncode}, summary status "
          f"{summary_of(run_dir).get('status')}")
    resumed = vae_bench(["resume", str(run_dir)], out)
    _, err = resumed.communicate()
    baseline.communicate()
    pairs = collections.Counter((r["step"], tag) for r in records_of(run_dir)
                                for tag in r if tag not in ("step", "epoch"))
    duplicates = [pair for pair, count in pairs.items() if count > 1]
    expected, actual = summary_of(out / "uninterrupted"), summary_of(run_dir)
    differing = sorted(k for k in expected if k not in TIMINGS and actual.get(k) != expected[k])
    print(f"resume exit code {resumed.returncode}; duplicate (step, tag) pairs: {duplicates}; "
          f"summary values differing from the uninterrupted run: {differing}")
    return resumed.returncode == 0 and not duplicates and not differing


def fuzzed_overrides(out: Path, examples: int, train_at_most: int) -> bool:
    print(f"\n== 4. {examples} fuzzed override sets ==")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from fuzzing import names_a_key, outcome_of, override_sets, train_accepted
    from hypothesis import HealthCheck, given, settings

    os.environ["VAE_BENCH_DATA"] = str(out / "no_data")  # no real data set is read
    os.environ.pop("HYDRA_FULL_ERROR", None)
    os.chdir(out)
    counts: collections.Counter = collections.Counter()
    bad: list[str] = []

    @settings(max_examples=examples, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(override_sets)
    def check(overrides: list[str]) -> None:
        counts["drawn"] += 1
        try:
            outcome = outcome_of(overrides)
        except Exception as error:  # anything but a user error is what this looks for
            bad.append(f"{overrides}: {type(error).__name__}: {error}")
            return
        if not outcome.accepted:
            counts["refused"] += 1
            if not names_a_key(outcome.message, overrides) or "\n" in outcome.message.strip():
                bad.append(f"{overrides}: message names no key: {outcome.message}")
            return
        counts["accepted"] += 1
        if counts["trained"] < train_at_most:
            counts["trained"] += 1
            summary = train_accepted(overrides, out / "fuzz" / f"run{counts['trained']}")
            counts[summary["status"]] += 1
            if summary["status"] not in ("completed", "diverged"):
                bad.append(f"{overrides}: run ended {summary['status']}")

    check()
    print(dict(counts))
    for line in bad[:20]:
        print("  ", line)
    return not bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="folder for the runs (default: a temp folder)")
    parser.add_argument("--skip-sweeps", action="store_true",
                        help="leave out the sweeps with a signalled job")
    parser.add_argument("--fuzz", type=int, default=0, metavar="N",
                        help="also check N fuzzed override sets")
    parser.add_argument("--fuzz-train", type=int, default=20, metavar="K",
                        help="train at most K of the accepted fuzzed sets (default 20)")
    parser.add_argument("--fuzz-only", action="store_true", help="run only the fuzzing")
    args = parser.parse_args()
    out = (args.out or Path(tempfile.mkdtemp(prefix="vae-bench-stress-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    print(f"runs in {out}")
    results = {}
    if not args.fuzz_only:
        results["lr=1.0 sweep"] = parameterizations_at_lr_1(out)
        if not args.skip_sweeps:
            for launcher, signum, target in [("joblib", signal.SIGTERM, "training"),
                                             ("joblib", signal.SIGKILL, "training"),
                                             ("submitit_local", signal.SIGKILL, "training"),
                                             ("joblib", signal.SIGKILL, "worker")]:
                name = f"{launcher} {signal.Signals(signum).name} {target}"
                results[name] = signalled_sweep(out, launcher, signum, target)
        results["SIGKILL + resume"] = killed_and_resumed(out)
    if args.fuzz:
        results["fuzzed overrides"] = fuzzed_overrides(out, args.fuzz, args.fuzz_train)
    print("\n== summary ==")
    for name, ok in results.items():
        print(f"{name:32} {'ok' if ok else 'FAILED'}")
    sys.exit(0 if all(results.values()) else 1)


if __name__ == "__main__":
    main()
