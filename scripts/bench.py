#!/usr/bin/env python3
"""Time vae-bench's trainer against a pytorch/examples-style VAE loop, in one process.
Run: `VAE_BENCH_DATA=/path/to/data scripts/bench.py --epochs 10 --out bench.json` (more below).

Three loops, same machine, same number of steps, same model (MNIST MLP 784-400-20, batch 128,
Adam lr 1e-3):

  (a) vae-bench's trainer, `vae_bench.train.train`, with its default logging and diagnostics;
  (b) the same trainer with `log.diagnostics=false`;
  (c) a reference loop written as pytorch/examples' vae/main.py: torchvision `MNIST` through a
      `DataLoader` with `ToTensor`, sigmoid + BCE(sum) + KL, and its per-epoch test loop.

Epoch time is the training pass only, for all three loops: the trainer's own
`train/epoch_seconds` for (a) and (b) (it excludes the end-of-epoch evaluation, logging and
checkpoint), and the time of the training `for` loop for (c). The end-of-epoch work (the trainer's
`end_epoch` less any IWAE, the reference's test loop and image saving) is timed on its own and
reported as `eval_seconds`. The trainer's final IWAE runs with k=1 on 100 examples and is not in
either figure; `--iwae` times the real k=1000 estimate separately, in a subprocess
(scripts/bench_iwae.py, which also times it for any trained run folder).

The FLOP bound: each linear layer of the model costs 2·MACs per example forward and 4·MACs
backward (input and weight gradients), i.e. 3 × 2 × MACs for training. Biases, activations, the
loss, the KL and the optimizer are not counted. The bound is those FLOPs divided by the
throughput of exactly those matmuls (batch 128, float32 unless --precision bf16), measured here
before and after the loops with the same thread setting.

    VAE_BENCH_DATA=/path/to/data python scripts/bench.py --epochs 10 --out bench.json
    python scripts/bench.py --epochs 1 --steps 100     # quick; synthetic data without the env

Without $VAE_BENCH_DATA the trainer runs on `dataset=synthetic` with MNIST's shape (60000 train
and 10000 test images of 1x28x28) and the reference on an in-memory torchvision MNIST holding
the same synthetic images; the output says so.
"""

from __future__ import annotations

# isort: off
import vae_bench  # noqa: F401  (before torch: it sets OpenMP's wait policy as vae-bench runs do)
# isort: on

import argparse
import math
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_iwae import print_iwae, run_iwae  # noqa: E402
from benchkit.examples_mlp import ReferenceLoop, load_synthetic_splits  # noqa: E402
from benchkit.machine import (  # noqa: E402
    flops_per_second,
    gemm_peak,
    load_now,
    machine_info,
    paired_ratios,
    peak_rss_mib,
    resolve_device,
    write_json,
)
from benchkit.trainer_loop import TrainerLoop, pick_data  # noqa: E402

LAYERS = [(784, 400), (400, 20), (400, 20), (20, 400), (400, 784)]  # (in, out) of each Linear
MACS_PER_EXAMPLE = sum(i * o for i, o in LAYERS)  # 651,200
FLOPS_PER_EXAMPLE = 3 * 2 * MACS_PER_EXAMPLE
# What autograd actually runs: the images need no gradient, so fc1's input gradient is skipped.
FLOPS_PER_EXAMPLE_NEEDED = FLOPS_PER_EXAMPLE - 2 * LAYERS[0][0] * LAYERS[0][1]
FLOP_NOTE = ("3 x 2 x MACs of the five Linear layers (784-400, 400-20 twice, 20-400, 400-784) = "
             f"{FLOPS_PER_EXAMPLE:,} FLOP per example: forward 2*MACs, backward 4*MACs (input and "
             "weight gradients, the first layer's input gradient included); biases, "
             "activations, loss, KL and optimizer are not counted")
LOOP_NAMES = {"a": "trainer (default logging + diagnostics)",
              "b": "trainer, log.diagnostics=false",
              "c": "pytorch/examples-style reference",
              "d": "trainer as (a), with --option"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=None,
                        help="cap the training steps per epoch (all loops), for a quick run")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for every loop (default: torch's own)")
    parser.add_argument("--compile", action="store_true", help="trainer.compile=true for (a), (b)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                        help="trainer.precision for (a), (b); the reference stays fp32")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--loops", default="abc", help="which loops to run, e.g. `ac`")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="add loop (d): loop (a) with this trainer override, e.g. "
                             "trainer.compile=true; repeat for several. Ratio d/a measures it")
    parser.add_argument("--no-interleave", dest="interleave", action="store_false",
                        help="run each loop's epochs in one go instead of taking turns")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iwae", action="store_true",
                        help="also time IWAE k=1000 on the test set (subprocess: seconds, peak "
                             "RSS), with the model trained by loop (a) or (b)")
    parser.add_argument("--iwae-k", type=int, default=1000)
    parser.add_argument("--iwae-examples", type=int, default=None,
                        help="IWAE on the first N test examples only (default: all)")
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    if not set(args.loops) <= set("abc") or not args.loops:
        parser.error("--loops takes letters from a, b, c")
    if args.option:
        if "a" not in args.loops:
            parser.error("--option compares with loop (a): keep `a` in --loops")
        if any("=" not in option for option in args.option):
            parser.error(f"--option takes KEY=VALUE, got {args.option}")
        args.loops += "d"
    if args.iwae and not set(args.loops) & set("ab"):
        parser.error("--iwae needs loop a or b (it evaluates the model they trained)")
    return args


# ---- the FLOP bound -----------------------------------------------------------------------------


def matmul_throughput(device: torch.device, dtype: torch.dtype, batch: int = 128,
                      repeats: int = 5, min_seconds: float = 0.3) -> dict:
    """FLOP/s of exactly the model's training matmuls at this batch size: per layer the forward
    (B,i)@(i,o), the input gradient (B,o)@(o,i) and the weight gradient (o,B)@(B,i)."""
    generator = torch.Generator().manual_seed(0)
    operands = []
    for i, o in LAYERS:
        x = torch.randn(batch, i, generator=generator)
        w = torch.randn(i, o, generator=generator)
        g = torch.randn(batch, o, generator=generator)
        operands += [(x, w), (g, w.t().contiguous()), (g.t().contiguous(), x)]
    operands = [(a.to(device, dtype), b.to(device, dtype)) for a, b in operands]
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in operands)
    assert flops == batch * FLOPS_PER_EXAMPLE

    def one_step() -> None:
        for a, b in operands:
            torch.mm(a, b)

    samples = flops_per_second(one_step, flops, device, repeats, min_seconds)
    # A large square GEMM, for the machine's peak at this thread count.
    peak = gemm_peak(device, dtype, min_seconds=min_seconds)
    return {"dtype": str(dtype).replace("torch.", ""), "flops_per_step": flops,
            "model_shapes_gflops": [round(s / 1e9, 2) for s in samples],
            "model_shapes_gflops_median": round(statistics.median(samples) / 1e9, 2),
            "gemm_1024_gflops": round(peak / 1e9, 2), "load": load_now()}


# ---- summary ------------------------------------------------------------------------------------


def summarize(args, data, loops, matmul, peak_rss_a, iwae, machine) -> dict:
    steps_per_epoch = math.ceil(data["num_train"] / 128)
    if args.steps:
        steps_per_epoch = min(steps_per_epoch, args.steps)
    examples = min(steps_per_epoch * 128, data["num_train"])
    gflops = [m["model_shapes_gflops_median"] for m in matmul]
    throughput = statistics.median(gflops) * 1e9
    bound_seconds = examples * FLOPS_PER_EXAMPLE / throughput
    result: dict = {
        "machine": machine, "options": {k: (str(v) if isinstance(v, Path) else v)
                                        for k, v in vars(args).items()},
        "data": {k: v for k, v in data.items() if k != "splits"},
        "examples_per_epoch": examples, "steps_per_epoch": steps_per_epoch,
        "epoch_time_covers": "the training pass only; end-of-epoch evaluation is eval_seconds",
        "flop_count": FLOP_NOTE, "flops_per_example": FLOPS_PER_EXAMPLE,
        "flops_per_epoch": examples * FLOPS_PER_EXAMPLE,
        "matmul": matmul, "matmul_gflops_used": round(throughput / 1e9, 2),
        "flop_bound_epoch_seconds": bound_seconds,
        "flops_per_example_needed": FLOPS_PER_EXAMPLE_NEEDED,
        "flop_bound_needed_epoch_seconds": bound_seconds * FLOPS_PER_EXAMPLE_NEEDED
        / FLOPS_PER_EXAMPLE,
        "flop_bound_needed_note": "the same, less fc1's input gradient, which autograd skips "
                                  "because the images need no gradient",
        "loops": {},
    }
    medians = {}
    for key, run in loops.items():
        med = statistics.median(run["epoch_seconds"])
        medians[key] = med
        entry = {"name": LOOP_NAMES[key], "median_epoch_seconds": med,
                 "examples_per_s": examples / med, "epoch_seconds_all": run["epoch_seconds"],
                 "median_eval_seconds": statistics.median(run["eval_seconds"]),
                 "eval_seconds_all": run["eval_seconds"],
                 "fraction_of_flop_bound": bound_seconds / med, "test_elbo": run["test_elbo"],
                 "load_1min_before_after": [run["load_before"][0], run["load_after"][0]],
                 "competing_load": run["cpu"]}
        if key == "c":
            entry["data"] = run["data"]
        elif key == "d":
            entry["name"] = f"trainer as (a), with {' '.join(args.option)}"
        else:
            entry["overrides"] = run["overrides"]
            entry["total_wall_seconds"] = run["total_wall_seconds"]
        result["loops"][key] = entry
    ratios = {}
    if "a" in medians and "c" in medians:
        ratios["a/c"] = medians["a"] / medians["c"]
    if "a" in medians and "b" in medians:
        ratios["a/b"] = medians["a"] / medians["b"]
    if "b" in medians and "c" in medians:
        ratios["b/c"] = medians["b"] / medians["c"]
    if "d" in medians:
        ratios["d/a"] = medians["d"] / medians["a"]
        result["option"] = args.option
    result["ratios"] = ratios
    # This machine's speed drifts by up to a third for tens of seconds (a shared host): the
    # loops of one turn ran back to back, so per-turn ratios are less exposed to that drift,
    # and their median is the headline figure; the ratio of medians mixes regimes.
    paired = {}
    for name in ("a/c", "a/b", "b/c", "d/a"):
        top, bottom = name.split("/")
        if top in loops and bottom in loops:
            pairs = paired_ratios(loops[top]["epoch_seconds"], loops[bottom]["epoch_seconds"])
            paired[name] = {"median": pairs["median"], "per_epoch": pairs["per_epoch"]}
    result["paired_ratios"] = paired
    if "a" in loops and "c" in loops:
        elbo_a, elbo_c = loops["a"]["test_elbo"], loops["c"]["test_elbo"]
        result["elbo_compare"] = {
            str(e): {"trainer": elbo_a[e], "reference": elbo_c[e],
                     "difference": elbo_a[e] - elbo_c[e],
                     "within_1_nat": abs(elbo_a[e] - elbo_c[e]) <= 1.0}
            for e in sorted(set(elbo_a) & set(elbo_c))}
    if peak_rss_a is not None:
        result["peak_rss_mib_after_a"] = peak_rss_a
        result["peak_rss_note"] = ("ru_maxrss of this process right after loop (a)'s first "
                                   "turn, before (b) and (c) start: interpreter, torch, both "
                                   "uint8 splits, the trainer and its logging")
    if iwae is not None:
        result["iwae"] = iwae
    return result


def print_report(result: dict) -> None:
    print(f"\ndata: {result['data']['note']}")
    if "c" in result["loops"]:
        print(f"reference data: {result['loops']['c']['data']['source']}")
    print(f"examples per epoch: {result['examples_per_epoch']} "
          f"({result['steps_per_epoch']} steps of 128); threads: "
          f"{result['machine']['torch_threads']}")
    print(f"FLOPs: {result['flop_count']}")
    for m in result["matmul"]:
        if m["when"] in ("start", "end"):
            print(f"matmul at the {m['when']} ({m['dtype']}, model shapes, batch 128): median "
                  f"{m['model_shapes_gflops_median']} GFLOP/s (samples "
                  f"{m['model_shapes_gflops']}); 1024^3 GEMM {m['gemm_1024_gflops']} GFLOP/s")
    between = [m["model_shapes_gflops_median"] for m in result["matmul"]
               if m["when"].startswith("after")]
    print(f"matmul between turns, GFLOP/s: {between}")
    print(f"FLOP-bound epoch time: {result['flop_bound_epoch_seconds']:.2f} s at "
          f"{result['matmul_gflops_used']} GFLOP/s ({result['flop_bound_needed_epoch_seconds']:.2f}"
          " s without fc1's input gradient, which autograd skips)\n")
    print(f"{'loop':44s} {'epoch s':>8s} {'ex/s':>8s} {'eval s':>7s} {'of bound':>8s}")
    for key, entry in result["loops"].items():
        print(f"({key}) {entry['name']:40s} {entry['median_epoch_seconds']:8.2f} "
              f"{entry['examples_per_s']:8.0f} {entry['median_eval_seconds']:7.2f} "
              f"{entry['fraction_of_flop_bound']:8.1%}")
        others = entry["competing_load"].get("other_cores")
        print(f"    epochs: {[round(s, 2) for s in entry['epoch_seconds_all']]}; other "
              f"processes kept {others} cores busy on average (1-min load before/after "
              f"{entry['load_1min_before_after']})")
    for name, value in result["ratios"].items():
        paired = result["paired_ratios"][name]
        print(f"ratio {name}: {paired['median']:.3f}, median of the per-epoch ratios (the "
              f"loops ran back to back; range {min(paired['per_epoch']):.3f}-"
              f"{max(paired['per_epoch']):.3f}); ratio of the median epoch times {value:.3f}")
    for epoch, row in result.get("elbo_compare", {}).items():
        print(f"test ELBO after epoch {epoch}: trainer {row['trainer']:.2f}, reference "
              f"{row['reference']:.2f}, difference {row['difference']:+.2f} nats "
              f"({'within' if row['within_1_nat'] else 'OUTSIDE'} ±1)")
    if "peak_rss_mib_after_a" in result:
        print(f"peak RSS after loop (a): {result['peak_rss_mib_after_a']:.0f} MiB")
    if "iwae" in result:
        print_iwae(result["iwae"])


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = pick_data()
    machine = machine_info()
    from vae_bench.train import keep_freed_memory_in_the_heap

    # The trainer applies it at setup; applied here first, all loops run under the same malloc.
    machine["glibc_malloc_tuned"] = keep_freed_memory_in_the_heap()
    print(f"data: {data['note']}", flush=True)
    mm_dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    matmul = [{"when": "start", **matmul_throughput(device, mm_dtype)}]
    peak_rss_a = None
    with tempfile.TemporaryDirectory(prefix="vae_bench_bench_") as tmp:
        workdir = Path(tmp)
        loops: dict[str, TrainerLoop | ReferenceLoop] = {}

        def make(key: str):
            if key == "c":
                if data["kind"] == "synthetic" and "splits" not in data:
                    data["splits"] = load_synthetic_splits(args.seed)
                return ReferenceLoop(args, data, workdir)
            return TrainerLoop(args, data, diagnostics=key in "ad", workdir=workdir,
                               extra=args.option if key == "d" else None)

        # Interleaved: every loop trains one epoch per turn, in alternating order, so that a
        # drift in the machine's load reaches all of them alike. --no-interleave: one go each.
        turns = range(1, args.epochs + 1) if args.interleave else [args.epochs]
        for turn, epochs in enumerate(turns):
            order = args.loops if turn % 2 == 0 else args.loops[::-1]
            for key in order:
                if key not in loops:
                    loops[key] = make(key)
                loop = loops[key]
                done_before = loop.epochs_done
                loop.run(epochs)
                if key == "a" and peak_rss_a is None and turn == 0 and order[0] == "a":
                    peak_rss_a = peak_rss_mib()
                others = loop.cpu[-1].get("other_cores")
                print(f"  ({key}) epochs {loop.epochs_done}/{args.epochs}: train seconds "
                      f"{[round(s, 2) for s in loop.epoch_seconds[done_before:]]}; other "
                      f"processes kept {others} cores busy", flush=True)
            # The matmul throughput between turns shows which of the machine's speed regimes
            # each turn ran in.
            between = matmul_throughput(device, mm_dtype, repeats=1, min_seconds=0.5)
            matmul.append({"when": f"after turn {turn + 1}", **between})
            print(f"  matmul after turn {turn + 1}: {between['model_shapes_gflops_median']} "
                  "GFLOP/s", flush=True)
        matmul.append({"when": "end", **matmul_throughput(device, mm_dtype)})
        results = {key: loops[key].result() for key in "abcd" if key in loops}
        iwae = None
        if args.iwae:
            source = results["a"] if "a" in results else results["b"]
            print(f"IWAE k={args.iwae_k} in a subprocess: load {load_now()}", flush=True)
            iwae = run_iwae(Path(source["run_dir"]), args.iwae_k, args.iwae_examples,
                            args.threads)
        machine["load_end"] = load_now()
        result = summarize(args, data, results, matmul, peak_rss_a, iwae, machine)
    print_report(result)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
