#!/usr/bin/env python
"""Thread settings for the conv model on this CPU: OpenMP's wait policy and the thread count.
Run: `python scripts/bench_threads.py --help` for its options; examples below.

libgomp, which runs PyTorch's CPU threads, reads its settings once, when torch loads, so every
setting runs in a fresh process, and the settings take turns round by round (alternating order)
so that a drift in the machine's load reaches all of them alike. Each process trains the lean
conv VAE (benchkit/lean_conv.py, CIFAR-10's shapes, batch 128, one fixed random batch) for
--steps steps after 3 warm-up steps and reports ms per step and a hash of the trained weights:
equal hashes are bitwise-equal results.

  unset     OMP_WAIT_POLICY unset, torch's default threads: libgomp spins at each barrier
            before it sleeps (what vae-bench ran with before it set the policy)
  passive   OMP_WAIT_POLICY=PASSIVE, torch's default threads: vae-bench's default
  1thread   OMP_NUM_THREADS=1: no barriers at all, half the cores

    python scripts/bench_threads.py --rounds 3 --steps 10 --out threads.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SETTINGS = {"unset": {}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
            "1thread": {"OMP_NUM_THREADS": "1"}}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per process")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated, from: {', '.join(SETTINGS)}")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.settings = args.settings.split(",")
    unknown = [name for name in args.settings if name not in SETTINGS]
    if unknown:
        parser.error(f"--settings: unknown {unknown}; allowed: {', '.join(SETTINGS)}")
    if args.rounds < 1 or args.steps < 1:
        parser.error("--rounds and --steps must be >= 1")
    return args


def worker(steps: int) -> None:
    """In a fresh process that has not imported vae_bench (which sets the wait policy)."""
    import torch
    from benchkit.lean_conv import LeanConvVAE

    torch.manual_seed(0)
    model = LeanConvVAE((3, 32, 32))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    x = torch.randint(0, 256, (128, 3, 32, 32), dtype=torch.uint8).float().div_(255)

    def step() -> None:
        loss = model.loss(x).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    seconds = (time.perf_counter() - start) / steps
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes()
                                     for p in model.parameters())).hexdigest()[:16]
    print("THREADS_RESULT " + json.dumps({"ms_per_step": seconds * 1e3, "weights": digest,
                                          "threads": torch.get_num_threads()}))


def run_setting(name: str, steps: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(SETTINGS[name])
    load = os.getloadavg()[0]
    process = subprocess.run([sys.executable, __file__, "--worker", str(steps)], env=env,
                             capture_output=True, text=True, timeout=3600)
    if process.returncode != 0:
        raise RuntimeError(f"{name}: worker failed:\n{process.stderr[-2000:]}")
    line = next(x for x in process.stdout.splitlines() if x.startswith("THREADS_RESULT "))
    return {**json.loads(line.removeprefix("THREADS_RESULT ")), "load_1min": round(load, 2)}


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.worker is not None:
        worker(args.worker)
        return None
    from benchkit.machine import load_now, machine_info, write_json

    machine = machine_info()
    runs: dict[str, list[dict]] = {name: [] for name in args.settings}
    for index in range(args.rounds):
        order = args.settings if index % 2 == 0 else args.settings[::-1]
        for name in order:
            runs[name].append(run_setting(name, args.steps))
            print(f"round {index + 1}: {name:8s} {runs[name][-1]['ms_per_step']:8.1f} ms/step "
                  f"(load {runs[name][-1]['load_1min']}, weights {runs[name][-1]['weights']})",
                  flush=True)
    machine["load_end"] = load_now()
    summary = {name: {"median_ms_per_step": statistics.median(r["ms_per_step"] for r in rs),
                      "weights": sorted({r["weights"] for r in rs}), "runs": rs}
               for name, rs in runs.items()}
    base = args.settings[0]
    for name in args.settings[1:]:
        pairs = [r["ms_per_step"] / b["ms_per_step"] for r, b in zip(runs[name], runs[base])]
        summary[name][f"paired_ratio_to_{base}"] = {"median": statistics.median(pairs),
                                                    "per_round": pairs}
    result = {"machine": machine, "options": {k: (str(v) if isinstance(v, Path) else v)
                                              for k, v in vars(args).items()},
              "settings": {name: SETTINGS[name] for name in args.settings},
              "results": summary}
    print()
    for name, row in summary.items():
        ratio = row.get(f"paired_ratio_to_{base}")
        print(f"{name:8s} median {row['median_ms_per_step']:8.1f} ms/step"
              + (f", {ratio['median']:.3f}x {base} (paired)" if ratio else "")
              + f"; weights {row['weights']}")
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
