#!/usr/bin/env python
"""What the IWAE estimate costs: time `test/nll_iwae` (k=1000 unless --k) of a trained run folder
on its test set, in a fresh process, with its seconds and the process's peak RSS before and
after the estimate (memory must not grow with k: samples come `eval.iwae_chunk` at a time).

    python scripts/bench_iwae.py outputs/runs/<run folder> --k 1000 --out iwae.json
    python scripts/bench.py --epochs 1 --iwae     # trains the MNIST MLP first, then this

The run folder is one `vae-bench train` wrote (config.yaml and checkpoints/last.pt), or one of
scripts/bench.py's trainer loops.
"""

from __future__ import annotations

# isort: off
import vae_bench  # noqa: F401  (before torch: it sets OpenMP's wait policy as vae-bench runs do)
# isort: on

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit.machine import (  # noqa: E402
    CpuMeter,
    load_now,
    machine_info,
    peak_rss_mib,
    synchronize,
    write_json,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", nargs="?", type=Path, help="a trained run folder")
    parser.add_argument("--k", type=int, default=1000, help="importance samples")
    parser.add_argument("--examples", type=int, default=None,
                        help="the first N test examples only (default: all)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None and args.run_dir is None:
        parser.error("name a trained run folder")
    if args.run_dir is not None and not (args.run_dir / "config.yaml").is_file():
        parser.error(f"{args.run_dir} is not a run folder: it has no config.yaml")
    return args


def iwae_worker(spec_json: str) -> None:
    """Run in a fresh process: load the trained model, time evaluate_iwae, report peak RSS."""

    import vae_bench.cli  # noqa: F401  (registers the schema)
    from vae_bench.config import data_root, load_run_config
    from vae_bench.data import load_splits
    from vae_bench.estimators import evaluate_iwae
    from vae_bench.models import VAE
    from vae_bench.train import IWAE_ROWS, memory_format, pick_device, synthetic_sizes

    spec = json.loads(spec_json)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    run_dir = Path(spec["run_dir"])
    cfg = load_run_config(run_dir / "config.yaml")
    device = pick_device(cfg.trainer.device)
    splits = load_splits(cfg.dataset.name, data_root(cfg), False,
                         **synthetic_sizes(cfg.dataset), synthetic_seed=cfg.seed)
    model = VAE(cfg, splits.image_shape).to(device, memory_format=memory_format(cfg))
    payload = torch.load(run_dir / "checkpoints" / "last.pt", map_location=device,
                         weights_only=False)
    model.load_state_dict(payload["model"])
    images = splits.test[:spec["examples"] or None].to(device)
    del splits
    k, chunk = spec["k"], cfg.eval.iwae_chunk
    rows = max(1, IWAE_ROWS // min(chunk, k))  # as vae_bench.train.iwae_nll
    generator = torch.Generator(device).manual_seed(cfg.seed + 3)
    rss_before = peak_rss_mib()
    meter = CpuMeter()
    start = time.perf_counter()
    nll = evaluate_iwae(model, images, rows, cfg.dataset.binarize, k, chunk, generator).item()
    synchronize(device)
    seconds = time.perf_counter() - start
    result = {"k": k, "examples": len(images), "chunk": chunk, "rows_per_batch": rows,
              "seconds": seconds, "nll_iwae": nll, "peak_rss_mib_before_iwae": rss_before,
              "peak_rss_mib": peak_rss_mib(), "threads": torch.get_num_threads(),
              "cpu": meter.stop()}
    if device.type == "cuda":
        result["cuda_max_memory_allocated_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    print("IWAE_RESULT " + json.dumps(result))


def run_iwae(run_dir: Path, k: int, examples: int | None, threads: int | None) -> dict:
    """Time the IWAE estimate of `run_dir`'s model in a fresh process; its figures."""
    spec = {"run_dir": str(run_dir), "k": k, "examples": examples, "threads": threads}
    load_before = load_now()
    process = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                             capture_output=True, text=True)
    if process.returncode != 0:
        raise RuntimeError(f"IWAE subprocess failed:\n{process.stderr[-3000:]}")
    line = next(x for x in process.stdout.splitlines() if x.startswith("IWAE_RESULT "))
    result = json.loads(line.removeprefix("IWAE_RESULT "))
    result.update(load_before=load_before, load_after=load_now(), model_from=str(run_dir))
    return result


def print_iwae(iw: dict) -> None:
    print(f"IWAE k={iw['k']} on {iw['examples']} test examples: {iw['seconds']:.1f} s, "
          f"NLL {iw['nll_iwae']:.2f}, peak RSS {iw['peak_rss_mib']:.0f} MiB "
          f"({iw['peak_rss_mib_before_iwae']:.0f} MiB before IWAE), load "
          f"{iw['load_before']} -> {iw['load_after']}")


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.worker:
        iwae_worker(args.worker)
        return None
    result = {"machine": machine_info(),
              "iwae": run_iwae(args.run_dir, args.k, args.examples, args.threads)}
    result["machine"]["load_end"] = load_now()
    print_iwae(result["iwae"])
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
