#!/usr/bin/env python
"""Time vae-bench's conv model on CIFAR-10 against a lean loop of the same architecture and
against the FLOP bound of its convolutions and matmuls, in one process.
Run: `python scripts/bench_conv.py --help` for its options; examples below.

Loops, taking turns epoch by epoch (alternating order), same data, batch 128, Adam lr 1e-3:

  (a)  vae-bench's trainer with default settings: `model=conv likelihood=gaussian_shared`
       (param=logvar), default logging and diagnostics;
  (l)  the lean loop (benchkit/lean_conv.py): the same architecture and likelihood written as
       plainly as possible: in-memory uint8, fused Adam, no logging, float32, default layout;
  (v1), (v2), ...: the trainer as (a) with each --variant's overrides, e.g.
       --variant trainer.channels_last=true --variant "trainer.precision=bf16 trainer.threads=1".

Epoch time is the training pass only (the trainer's `train/epoch_seconds`; the lean loop's
`for` loop); the end-of-epoch evaluation is `eval_seconds`. The headline ratios are medians of
per-epoch ratios of loops that ran back to back (this host is shared and its speed drifts).
Issue 19's target: (a) at <= 0.75x (l).

The FLOP bound (benchkit/conv_flops.py): the FLOPs of every convolution and Linear layer of the
model the trainer builds (forward, weight gradient, input gradient), divided by this machine's
throughput for exactly those layers, each alone at batch 128, measured in this run before,
between and after the turns, in float32 and the default layout, channels_last, bf16 autocast.

    VAE_BENCH_DATA=../shared/data python scripts/bench_conv.py --epochs 3 --out conv.json
    VAE_BENCH_DATA=../shared/data python scripts/bench_conv.py --epochs 1 --steps 40 \\
        --variant trainer.channels_last=true --profile 20        # quick, with a profile

Data: CIFAR-10 from --data-root, by default $VAE_BENCH_DATA/CIFAR10-JPEG, the JPEG re-encoding
in this project's shared data (results on it are labelled "CIFAR-10 (JPEG re-encoding)").
"""

from __future__ import annotations

# isort: off
import vae_bench  # noqa: F401  (before torch: it sets OpenMP's wait policy as vae-bench runs do)
# isort: on

import argparse
import contextlib
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchkit.conv_flops import SETTINGS, flop_note, layer_times, model_layers  # noqa: E402
from benchkit.lean_conv import LeanConvLoop  # noqa: E402
from benchkit.machine import (  # noqa: E402
    gemm_peak,
    load_now,
    machine_info,
    paired_ratios,
    peak_rss_mib,
    write_json,
)
from benchkit.trainer_loop import TrainerLoop  # noqa: E402

BATCH = 128
TARGET = 0.75  # issue 19: a conv CIFAR epoch at <= 0.75x the lean fp32 loop's


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=None,
                        help="cap the training steps per epoch (all loops), for a quick run")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for every loop (default: torch's own)")
    parser.add_argument("--variant", action="append", default=[], metavar="OVERRIDES",
                        help="add a loop: the trainer as (a) with these space-separated "
                             "overrides; repeat for several")
    parser.add_argument("--likelihood", default="gaussian_shared",
                        help="the trainer's likelihood (the lean loop's stays gaussian_shared)")
    parser.add_argument("--profile", type=int, default=0, metavar="STEPS",
                        help="after the turns, profile STEPS training steps of (a) and (l) "
                             "(torch.profiler, self CPU time by op)")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="the folder holding cifar-10-batches-py (default: "
                             "$VAE_BENCH_DATA/CIFAR10-JPEG)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON")
    args = parser.parse_args(argv)
    for name in ("epochs", "steps", "threads", "profile"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "profile" else 1):
            parser.error(f"--{name}={value} must be >= {0 if name == 'profile' else 1}")
    if any("=" not in item for variant in args.variant for item in variant.split()):
        parser.error(f"--variant takes space-separated KEY=VALUE overrides, got {args.variant}")
    if args.data_root is None:
        if "VAE_BENCH_DATA" not in os.environ:
            parser.error("set $VAE_BENCH_DATA (CIFAR10-JPEG under it) or pass --data-root")
        args.data_root = Path(os.environ["VAE_BENCH_DATA"]) / "CIFAR10-JPEG"
    # TrainerLoop reads these options of scripts/bench.py; the variants set their own.
    args.device, args.compile, args.precision = "cpu", False, "fp32"
    return args


def cifar_data(root: Path) -> dict:
    from vae_bench.data import load_splits

    splits = load_splits("cifar10", root)  # DataError, loudly, when the files are not there
    name = ("CIFAR-10 (JPEG re-encoding)" if root.resolve().name == "CIFAR10-JPEG"
            else "CIFAR-10")
    return {"kind": "cifar10", "root": str(root), "num_train": len(splits.train),
            "trainer_overrides": ["dataset=cifar10", f"data.root={root}"],
            "note": f"{name} from {root}: {len(splits.train)} training and "
                    f"{len(splits.test)} test images of {tuple(splits.image_shape)}"}


def conv_layers(cfg) -> tuple[list[dict], tuple[int, int, int]]:
    from vae_bench.models import VAE

    image_shape = (3, 32, 32)
    return model_layers(VAE(cfg, image_shape), image_shape), image_shape


def measure_bounds(layers: list[dict], when: str, settings=tuple(SETTINGS)) -> list[dict]:
    rows = []
    for setting in settings:
        row = layer_times(layers, setting, BATCH, repeats=3 if when in ("start", "end") else 1)
        rows.append({"when": when, **row})
    return rows


# ---- profile ------------------------------------------------------------------------------------

LINEAR_ALGEBRA_OPS = ("conv", "addmm", "aten::mm", "bmm", "matmul", "linear")


def profile_summary(profile, steps: int, top: int = 15) -> dict:
    """Self CPU time by op over `steps` steps, the top ops and the share in convolutions and
    matmuls."""
    averages = sorted(profile.key_averages(), key=lambda e: e.self_cpu_time_total,
                      reverse=True)
    total = sum(e.self_cpu_time_total for e in averages)
    linear = sum(e.self_cpu_time_total for e in averages
                 if any(op in e.key.lower() for op in LINEAR_ALGEBRA_OPS))
    return {"steps": steps, "self_cpu_ms_per_step": total / 1e3 / steps,
            "linear_algebra_ms_per_step": linear / 1e3 / steps,
            "linear_algebra_share": linear / total if total else None,
            "top_ops": [{"op": e.key, "calls_per_step": e.count / steps,
                         "self_cpu_ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                         "share": e.self_cpu_time_total / total} for e in averages[:top]],
            "table": profile.key_averages().table(sort_by="self_cpu_time_total",
                                                  row_limit=top)}


@contextlib.contextmanager
def profiled_train_epochs(profiles: list):
    """Profile each call of vae_bench.train.train_epoch (the training pass only)."""
    import vae_bench.train as train_module

    original = train_module.train_epoch

    def wrapper(*args, **kwargs):
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            outcome = original(*args, **kwargs)
        profiles.append(prof)
        return outcome

    train_module.train_epoch = wrapper
    try:
        yield
    finally:
        train_module.train_epoch = original


def run_profiles(args, data, workdir: Path, lean_data) -> dict:
    """Two epochs of args.profile steps each for (a) and (l); the second epoch is profiled
    (the first creates oneDNN's primitives and warms the allocator)."""
    quick = argparse.Namespace(**{**vars(args), "steps": args.profile, "epochs": 2})
    threads = torch.get_num_threads()
    profiles: list = []
    trainer = TrainerLoop(quick, data, diagnostics=True, workdir=workdir,
                          model_overrides=model_overrides(args))
    with profiled_train_epochs(profiles):
        trainer.run(2)
    torch.set_num_threads(threads)
    lean = LeanConvLoop(*lean_data, trainer.cfg.model, args.seed, args.profile)
    lean.run(1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        lean.train_epoch()
    return {"a": profile_summary(profiles[-1], args.profile),
            "l": profile_summary(prof, args.profile), "load": load_now()}


# ---- summary ------------------------------------------------------------------------------------


def model_overrides(args) -> list[str]:
    return ["model=conv", f"likelihood={args.likelihood}", "optim=adam", "optim.lr=1e-3",
            "param=logvar", f"trainer.batch_size={BATCH}"]


def loop_names(args) -> dict[str, str]:
    names = {"a": f"trainer, defaults (model=conv likelihood={args.likelihood})",
             "l": "lean fp32 loop"}
    for index, variant in enumerate(args.variant, start=1):
        names[f"v{index}"] = f"trainer as (a), {variant}"
    return names


def summarize(args, data, results, bounds, peaks, peak_rss_a, layers, profile, machine) -> dict:
    steps_per_epoch = math.ceil(data["num_train"] / BATCH)
    if args.steps:
        steps_per_epoch = min(steps_per_epoch, args.steps)
    examples = min(steps_per_epoch * BATCH, data["num_train"])
    bound = {}
    for setting in SETTINGS:
        seconds = [row["seconds_per_step"] for row in bounds if row["setting"] == setting]
        bound[setting] = {"median_seconds_per_step": statistics.median(seconds),
                          "epoch_seconds": statistics.median(seconds) * steps_per_epoch,
                          "samples_seconds_per_step": seconds}
    flops_per_example = sum(layer["train_flops"] for layer in layers)
    names = loop_names(args)
    result: dict = {
        "machine": machine,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": data, "examples_per_epoch": examples, "steps_per_epoch": steps_per_epoch,
        "epoch_time_covers": "the training pass only; end-of-epoch evaluation is eval_seconds",
        "flop_count": flop_note(layers), "flops_per_example": flops_per_example,
        "flops_per_epoch": flops_per_example * examples,
        "flop_bound": bound, "flop_bound_measurements": bounds, "gemm_1024_gflops": peaks,
        "loops": {}, "paired_ratios": {},
    }
    for key, run in results.items():
        median = statistics.median(run["epoch_seconds"])
        entry = {"name": names[key], "median_epoch_seconds": median,
                 "examples_per_s": examples / median, "epoch_seconds_all": run["epoch_seconds"],
                 "median_eval_seconds": statistics.median(run["eval_seconds"]),
                 "test_elbo": run["test_elbo"],
                 "fraction_of_fp32_flop_bound": bound["fp32"]["epoch_seconds"] / median,
                 "achieved_gflops": flops_per_example * examples / median / 1e9,
                 "load_1min_before_after": [run["load_before"][0], run["load_after"][0]],
                 "competing_load": run["cpu"]}
        if "overrides" in run:
            entry["overrides"] = run["overrides"]
        result["loops"][key] = entry
        if key != "l":
            result["paired_ratios"][f"{key}/l"] = paired_ratios(run["epoch_seconds"],
                                                                results["l"]["epoch_seconds"])
        if key.startswith("v"):
            result["paired_ratios"][f"{key}/a"] = paired_ratios(run["epoch_seconds"],
                                                                results["a"]["epoch_seconds"])
    a_over_l = result["paired_ratios"]["a/l"]["median"]
    result["target"] = {"wanted": f"(a) <= {TARGET} x (l), paired median", "a/l": a_over_l,
                        "met": a_over_l <= TARGET}
    result["peak_rss_mib_after_a"] = peak_rss_a
    result["peak_rss_note"] = ("ru_maxrss of this process after (a)'s first epoch and its "
                               "end-of-epoch evaluation, before any other loop ran: "
                               "interpreter, torch, the CIFAR-10 uint8 splits, the trainer, "
                               "its logging and the FLOP-bound measurements")
    if profile:
        result["profile"] = profile
    return result


def print_report(result: dict) -> None:
    print(f"\ndata: {result['data']['note']}")
    print(f"examples per epoch: {result['examples_per_epoch']} ({result['steps_per_epoch']} "
          f"steps of {BATCH}); threads: {result['machine']['torch_threads']}; load at the "
          f"start {result['machine']['load_start']}, at the end {result['machine']['load_end']}")
    print(f"FLOPs: {result['flop_count']}")
    print(f"1024^3 GEMM: {result['gemm_1024_gflops']} GFLOP/s")
    print("FLOP bound (the layers alone), epoch seconds: " + ", ".join(
        f"{setting} {row['epoch_seconds']:.2f}" for setting, row in result["flop_bound"].items()))
    start = [row for row in result["flop_bound_measurements"] if row["when"] == "start"]
    for row in start:
        print(f"  {row['setting']:20s} " + "  ".join(
            f"{layer['name']} {layer['gflops']:.0f}" for layer in row["layers"]) + " GFLOP/s")
    print(f"\n{'loop':58s} {'epoch s':>8s} {'ex/s':>7s} {'eval s':>7s} {'of bound':>8s}")
    for key, entry in result["loops"].items():
        print(f"({key}) {entry['name'][:53]:53s} {entry['median_epoch_seconds']:8.2f} "
              f"{entry['examples_per_s']:7.0f} {entry['median_eval_seconds']:7.2f} "
              f"{entry['fraction_of_fp32_flop_bound']:8.1%}")
        print(f"    epochs {[round(s, 2) for s in entry['epoch_seconds_all']]}; other processes "
              f"kept {entry['competing_load'].get('other_cores')} cores busy; test ELBO "
              f"{ {e: round(v, 2) for e, v in entry['test_elbo'].items()} }")
    for name, ratio in result["paired_ratios"].items():
        print(f"ratio {name}: {ratio['median']:.3f} (median of per-epoch ratios, range "
              f"{min(ratio['per_epoch']):.3f}-{max(ratio['per_epoch']):.3f}; ratio of medians "
              f"{ratio['ratio_of_medians']:.3f})")
    target = result["target"]
    print(f"target {target['wanted']}: {'MET' if target['met'] else 'MISSED'} "
          f"(a/l = {target['a/l']:.3f})")
    print(f"peak RSS after (a)'s first epoch: {result['peak_rss_mib_after_a']:.0f} MiB")
    for key, summary in result.get("profile", {}).items():
        if key == "load":
            continue
        print(f"\nprofile of ({key}), {summary['steps']} steps: "
              f"{summary['self_cpu_ms_per_step']:.1f} ms self CPU per step, "
              f"{summary['linear_algebra_share']:.0%} in convolutions and matmuls")
        print(summary["table"])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    data = cifar_data(args.data_root)
    machine = machine_info()
    from vae_bench.train import keep_freed_memory_in_the_heap

    # The trainer applies it at setup; applied here first, all loops run under the same malloc.
    machine["glibc_malloc_tuned"] = keep_freed_memory_in_the_heap()
    print(f"data: {data['note']}; load {load_now()}", flush=True)
    peaks = {"fp32": round(gemm_peak(torch.device("cpu"), torch.float32) / 1e9, 1),
             "bf16": round(gemm_peak(torch.device("cpu"), torch.bfloat16) / 1e9, 1)}
    names = loop_names(args)
    keys = ["a", "l", *[f"v{i}" for i in range(1, len(args.variant) + 1)]]
    peak_rss_a = None
    lean_data = None
    with tempfile.TemporaryDirectory(prefix="vae_bench_conv_") as tmp:
        workdir = Path(tmp)
        loops: dict = {"a": TrainerLoop(args, data, True, workdir,
                                        model_overrides=model_overrides(args))}
        layers, _ = conv_layers(loops["a"].cfg)
        bounds = measure_bounds(layers, "start")
        print("FLOP bound per step at the start: " + ", ".join(
            f"{row['setting']} {row['seconds_per_step'] * 1e3:.1f} ms" for row in bounds),
            flush=True)
        for turn in range(args.epochs):
            order = keys if turn % 2 == 0 else keys[::-1]
            for key in order:
                if key not in loops:
                    if key == "l":
                        from vae_bench.data import load_splits

                        splits = load_splits("cifar10", args.data_root)
                        lean_data = (splits.train, splits.test)
                        loops[key] = LeanConvLoop(*lean_data, loops["a"].cfg.model, args.seed,
                                                  args.steps)
                    else:
                        variant = args.variant[int(key[1:]) - 1].split()
                        loops[key] = TrainerLoop(args, data, True, workdir, extra=variant,
                                                 model_overrides=model_overrides(args))
                loop = loops[key]
                loop.run(turn + 1)
                # A variant's trainer.threads must not reach the loops after it.
                torch.set_num_threads(threads)
                if key == "a" and turn == 0:
                    peak_rss_a = peak_rss_mib()
                print(f"  ({key}) epoch {turn + 1}/{args.epochs}: {loop.epoch_seconds[-1]:.2f} s"
                      f"; other processes kept {loop.cpu[-1].get('other_cores')} cores busy "
                      f"({names[key]})", flush=True)
            between = measure_bounds(layers, f"after turn {turn + 1}", ("fp32",))
            bounds += between
            print(f"  FLOP bound (fp32) after turn {turn + 1}: "
                  f"{between[0]['seconds_per_step'] * 1e3:.1f} ms per step", flush=True)
        bounds += measure_bounds(layers, "end")
        results = {key: loops[key].result() for key in keys}
        profile = run_profiles(args, data, workdir, lean_data) if args.profile else None
    machine["load_end"] = load_now()
    result = summarize(args, data, results, bounds, peaks, peak_rss_a, layers, profile, machine)
    print_report(result)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
