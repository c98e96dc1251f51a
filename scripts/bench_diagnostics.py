#!/usr/bin/env python3
"""What the default diagnostics cost: trainer epoch time with `log.diagnostics=true` (default
cadences) vs `log.diagnostics=false`, several repeats in alternating order, medians.
Run: `VAE_BENCH_DATA=/path/to/data scripts/bench_diagnostics.py --repeats 3` (more below).

Issue 3's target is at most 10% overhead on the epoch time. The epoch time is the trainer's own
`train/epoch_seconds` (the training pass); the end-of-epoch work (evaluation, latent-usage
histogram and figure, image grids, checkpoint) is timed on its own, because diagnostics add to it
too. Each run also records how many cores other processes kept busy meanwhile: on a shared
machine, compare only runs that saw the same competing load.

The ratio of two runs' epoch times moves with the machine's speed (it drifts by up to a third
over tens of seconds on a shared host), so the script also times the diagnostics calls inside
each epoch: that fraction of the epoch is measured within one run and is the steadier figure.

    VAE_BENCH_DATA=/path/to/data python scripts/bench_diagnostics.py --repeats 5 --threads 1
    python scripts/bench_diagnostics.py --steps 100     # quick; synthetic data without the env
"""

from __future__ import annotations

# isort: off
import vae_bench  # noqa: F401  (before torch: it sets OpenMP's wait policy as vae-bench runs do)
# isort: on

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit.machine import load_now, machine_info, write_json  # noqa: E402
from benchkit.trainer_loop import pick_data, run_trainer  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="runs of each setting")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per run")
    parser.add_argument("--steps", type=int, default=None, help="cap steps per epoch")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    # run_trainer reads these options of scripts/bench.py too.
    args.compile, args.precision = False, "fp32"
    return args


HOOKS = ("before_backward", "after_backward", "after_step", "flush")


class HookTimer:
    """Time spent inside the Diagnostics calls the training pass makes. Epoch and hook time come
    from the same epoch, so their ratio is far less exposed to the machine's drifting speed than
    the ratio of two runs is; it misses only indirect costs (the retained gradient of s)."""

    def __init__(self):
        from vae_bench.diagnostics import Diagnostics

        self.seconds = 0.0
        self.originals = {name: getattr(Diagnostics, name) for name in HOOKS}
        for name, original in self.originals.items():
            setattr(Diagnostics, name, self._timed(original))

    def _timed(self, original):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - start

        return wrapper

    def take(self) -> float:
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def main(argv: list[str] | None = None) -> dict:
    import tempfile

    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = pick_data()
    print(f"data: {data['note']}", flush=True)
    runs: dict[str, list[dict]] = {"on": [], "off": []}
    hooks = HookTimer()
    with tempfile.TemporaryDirectory(prefix="vae_bench_diag_") as tmp:
        # One untimed run first: imports, allocator and the page cache warm up for both.
        run_trainer(argparse.Namespace(**{**vars(args), "epochs": 1, "steps": 20}), data,
                    diagnostics=True, workdir=Path(tmp))
        for repeat in range(args.repeats):
            order = ("on", "off") if repeat % 2 == 0 else ("off", "on")
            for setting in order:
                hooks.take()
                result = run_trainer(args, data, diagnostics=setting == "on", workdir=Path(tmp))
                # Every Diagnostics method timed here runs inside the timed training pass.
                result["hook_seconds"] = hooks.take()
                runs[setting].append(result)
                print(f"[{repeat + 1}/{args.repeats}] diagnostics {setting:3s}: epoch seconds "
                      f"{[round(s, 2) for s in result['epoch_seconds']]}, end of epoch "
                      f"{[round(s, 2) for s in result['eval_seconds']]}; other processes "
                      f"{result['cpu'].get('other_cores')} cores", flush=True)

    def median(setting: str, key: str) -> float:
        return statistics.median(s for run in runs[setting] for s in run[key])

    epoch_on, epoch_off = median("on", "epoch_seconds"), median("off", "epoch_seconds")
    eval_on, eval_off = median("on", "eval_seconds"), median("off", "eval_seconds")
    # Per repeat, the pair ran back to back: their ratios are less exposed to drifting load.
    paired = [statistics.median(on["epoch_seconds"]) / statistics.median(off["epoch_seconds"])
              for on, off in zip(runs["on"], runs["off"])]
    hook_fractions = [run["hook_seconds"] / sum(run["epoch_seconds"]) for run in runs["on"]]
    result = {
        "hook_seconds": [run["hook_seconds"] for run in runs["on"]],
        "hook_fraction_of_epoch": hook_fractions,
        "hook_fraction_median": statistics.median(hook_fractions),
        "machine": machine_info(), "data": {k: v for k, v in data.items() if k != "splits"},
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "median_epoch_seconds": {"on": epoch_on, "off": epoch_off},
        "overhead_ratio": epoch_on / epoch_off,
        "paired_ratios": paired, "paired_ratio_median": statistics.median(paired),
        "median_end_of_epoch_seconds": {"on": eval_on, "off": eval_off},
        "epoch_plus_end_ratio": (epoch_on + eval_on) / (epoch_off + eval_off),
        "target": "epoch time with diagnostics <= 1.10 x without (issue 3)",
        "runs": {setting: [{"epoch_seconds": r["epoch_seconds"],
                            "eval_seconds": r["eval_seconds"], "cpu": r["cpu"]}
                           for r in rs] for setting, rs in runs.items()},
        "load_end": load_now(),
    }
    print(f"\nmedian epoch seconds: diagnostics on {epoch_on:.2f}, off {epoch_off:.2f}; "
          f"ratio on/off {result['overhead_ratio']:.3f} (paired median "
          f"{result['paired_ratio_median']:.3f}; target <= 1.10)")
    print(f"time inside the diagnostics calls: {result['hook_fraction_median']:.1%} of the "
          f"epoch time (median over the runs with diagnostics on; "
          f"{[f'{f:.1%}' for f in hook_fractions]})")
    print(f"median end-of-epoch seconds: on {eval_on:.2f}, off {eval_off:.2f}; epoch + end "
          f"ratio {result['epoch_plus_end_ratio']:.3f}")
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
