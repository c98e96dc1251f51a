"""The machine a benchmark ran on, how loaded it was, and the timing tools every benchmark
shares. This host is shared and its speed drifts: every figure carries the load it was taken
under."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch


def load_now() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


class CpuMeter:
    """CPU time used on the whole machine vs by this process (all its threads) over an interval:
    `other_cores` is how many cores other processes kept busy on average, i.e. the load that
    competed with the loop being timed. Linux only (/proc/stat); None elsewhere."""

    def __init__(self):
        self.start = self._snapshot()

    @staticmethod
    def _snapshot():
        times = os.times()
        own = times.user + times.system
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except (OSError, ValueError):
            return time.perf_counter(), own, None
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
        return time.perf_counter(), own, busy

    def stop(self) -> dict:
        (t0, own0, busy0), (t1, own1, busy1) = self.start, self._snapshot()
        wall, own = t1 - t0, own1 - own0
        result = {"wall_seconds": round(wall, 3), "own_cpu_seconds": round(own, 3),
                  "load_1min": round(os.getloadavg()[0], 2)}
        if busy0 is not None and wall > 0:
            result["other_cores"] = round(max(0.0, (busy1 - busy0) - own) / wall, 2)
        return result


def merge_cpu(meters: list[dict]) -> dict:
    """Sum the CpuMeter readings of several intervals (the turns of one loop)."""
    wall = sum(m["wall_seconds"] for m in meters)
    merged = {"wall_seconds": round(wall, 3),
              "own_cpu_seconds": round(sum(m["own_cpu_seconds"] for m in meters), 3),
              "load_1min": [m["load_1min"] for m in meters]}
    if wall > 0 and all("other_cores" in m for m in meters):
        merged["other_cores"] = round(sum(m["other_cores"] * m["wall_seconds"]
                                          for m in meters) / wall, 2)
        merged["other_cores_per_turn"] = [m["other_cores"] for m in meters]
    return merged


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def machine_info() -> dict:
    info = {
        "platform": platform.platform(), "python": platform.python_version(),
        "torch": torch.__version__, "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "env": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY",
                                               "MKL_NUM_THREADS", "VAE_BENCH_DATA")},
        "load_start": load_now(),
    }
    with contextlib.suppress(ImportError):
        import torchvision

        info["torchvision"] = torchvision.__version__
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def flops_per_second(one_step: Callable[[], None], flops: float, device: torch.device,
                     repeats: int = 5, min_seconds: float = 0.3) -> list[float]:
    """FLOP/s of `one_step` (which does `flops` FLOPs), `repeats` samples of at least
    `min_seconds` each, after a warm-up."""
    for _ in range(3):
        one_step()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while True:
            one_step()
            count += 1
            synchronize(device)
            if time.perf_counter() - start >= min_seconds:
                break
        samples.append(flops * count / (time.perf_counter() - start))
    return samples


def gemm_peak(device: torch.device, dtype: torch.dtype, n: int = 1024,
              min_seconds: float = 0.3) -> float:
    """FLOP/s of an n³ matrix product: the machine's peak at this thread count and dtype."""
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=generator).to(device, dtype)
    b = torch.randn(n, n, generator=generator).to(device, dtype)
    samples = flops_per_second(lambda: torch.mm(a, b), 2 * n ** 3, device, repeats=1,
                               min_seconds=min_seconds)
    return samples[0]


def paired_ratios(top: list[float], bottom: list[float]) -> dict:
    """Per-epoch ratios of two loops that took turns: on a host whose speed drifts, the loops
    of one turn ran back to back, so these are less exposed to the drift than the ratio of the
    medians, and their median is the headline figure."""
    pairs = [x / y for x, y in zip(top, bottom)]
    return {"median": statistics.median(pairs), "per_epoch": pairs,
            "ratio_of_medians": statistics.median(top) / statistics.median(bottom)}


def write_json(path: Path | None, result: dict) -> None:
    """The figures as JSON at `path`, when one was given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")
