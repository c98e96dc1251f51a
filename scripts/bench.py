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
either figure; `--iwae` times the real k=1000 estimate separately, in a subprocess.

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

import argparse
import contextlib
import gzip
import io
import json
import math
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

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
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


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
    parser.add_argument("--iwae-worker", default=None, help=argparse.SUPPRESS)
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


# ---- environment --------------------------------------------------------------------------------


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

    for _ in range(5):
        one_step()
    synchronize(device)
    samples = []
    for _ in range(repeats):
        count, start = 0, time.perf_counter()
        while True:
            one_step()
            count += 1
            if count % 10 == 0:
                synchronize(device)
                if time.perf_counter() - start >= min_seconds:
                    break
        samples.append(flops * count / (time.perf_counter() - start))
    # A large square GEMM, for the machine's peak at this thread count.
    n = 1024
    a = torch.randn(n, n, generator=generator).to(device, dtype)
    b = torch.randn(n, n, generator=generator).to(device, dtype)
    torch.mm(a, b)
    synchronize(device)
    start, count = time.perf_counter(), 0
    while time.perf_counter() - start < min_seconds:
        torch.mm(a, b)
        synchronize(device)
        count += 1
    peak = 2 * n ** 3 * count / (time.perf_counter() - start)
    return {"dtype": str(dtype).replace("torch.", ""), "flops_per_step": flops,
            "model_shapes_gflops": [round(s / 1e9, 2) for s in samples],
            "model_shapes_gflops_median": round(statistics.median(samples) / 1e9, 2),
            "gemm_1024_gflops": round(peak / 1e9, 2), "load": load_now()}


# ---- (a), (b): the vae-bench trainer ------------------------------------------------------------


def compose_trainer_config(args: argparse.Namespace, data: dict, diagnostics: bool,
                           extra: list[str] | None = None):
    from hydra import compose, initialize_config_dir

    import vae_bench.cli  # noqa: F401  (registers the schema and the job-name resolver)
    from vae_bench.config import config_dir, validate

    overrides = [
        f"trainer.epochs={args.epochs}", f"trainer.device={args.device}", f"seed={args.seed}",
        f"trainer.compile={str(args.compile).lower()}", f"trainer.precision={args.precision}",
        "trainer.batch_size=128", "model=mlp", "optim=adam", "optim.lr=1e-3",
        "param=logvar", "likelihood=bernoulli", "log.quiet=true",
        # The final IWAE is not what this measures: keep it tiny (it is timed with --iwae).
        "eval.iwae_k=1", "eval.iwae_max_examples=100",
        f"log.diagnostics={str(diagnostics).lower()}",
    ]
    if args.threads:
        overrides.append(f"trainer.threads={args.threads}")
    if args.steps:
        overrides.append(f"trainer.max_steps_per_epoch={args.steps}")
    overrides += data["trainer_overrides"] + (extra or [])
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    validate(cfg)
    return cfg, overrides


@contextlib.contextmanager
def timed_end_epoch(records: list[float]):
    """Wrap vae_bench.train.end_epoch (looked up at call time by train()) to time it."""
    import vae_bench.train as train_module

    original = train_module.end_epoch

    def wrapper(run):
        start = time.perf_counter()
        try:
            return original(run)
        finally:
            synchronize(run.device)
            records.append(time.perf_counter() - start)

    train_module.end_epoch = wrapper
    try:
        yield
    finally:
        train_module.end_epoch = original


class TrainerLoop:
    """One trainer run, trained epoch by epoch: `run(n)` trains up to n epochs in total, resuming
    the run folder's checkpoint after the first call (vae-bench resumes are bitwise exact on the
    CPU), so that several loops can take turns on a machine whose load drifts."""

    def __init__(self, args: argparse.Namespace, data: dict, diagnostics: bool, workdir: Path,
                 extra: list[str] | None = None):
        self.cfg, self.overrides = compose_trainer_config(args, data, diagnostics, extra)
        self.run_dir = Path(tempfile.mkdtemp(prefix="run_", dir=workdir))
        self.seed = args.seed
        self.device = resolve_device(args.device)
        self.epochs_done = 0
        self.epoch_seconds: list[float] = []
        self.eval_seconds: list[float] = []
        self.test_elbo: dict[int, float] = {}
        self.cpu: list[dict] = []
        self.total_wall_seconds = 0.0
        self.load_before = load_now()

    def run(self, epochs: int) -> None:
        from omegaconf import OmegaConf

        from vae_bench.tracking import read_metrics
        from vae_bench.train import train

        cfg = OmegaConf.merge(self.cfg, {"trainer": {"epochs": epochs}})
        if not self.epochs_done:
            torch.manual_seed(self.seed)
        end_epoch_seconds: list[float] = []
        meter = CpuMeter()
        start = time.perf_counter()
        with timed_end_epoch(end_epoch_seconds):
            summary = train(cfg, self.run_dir, resume=self.epochs_done > 0, quiet=True)
        self.total_wall_seconds += time.perf_counter() - start
        self.cpu.append(meter.stop())
        if summary["status"] != "completed":
            raise RuntimeError(f"trainer run ended with status {summary['status']}: {summary}")
        if summary.get("eval/iwae_seconds") is not None:  # the tiny IWAE at a call's last epoch
            end_epoch_seconds[-1] -= summary["eval/iwae_seconds"]
        self.eval_seconds += end_epoch_seconds
        self.epoch_seconds = list(summary["train/epoch_seconds_all"])
        self.test_elbo = {int(r["epoch"]): float(r["test/elbo"])
                          for r in read_metrics(self.run_dir) if "test/elbo" in r}
        self.epochs_done = epochs

    def result(self) -> dict:
        return {"epoch_seconds": self.epoch_seconds, "eval_seconds": self.eval_seconds,
                "test_elbo": self.test_elbo, "total_wall_seconds": self.total_wall_seconds,
                "run_dir": str(self.run_dir), "overrides": self.overrides,
                "load_before": self.load_before, "load_after": load_now(),
                "cpu": merge_cpu(self.cpu)}


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


def run_trainer(args: argparse.Namespace, data: dict, diagnostics: bool, workdir: Path) -> dict:
    """One whole trainer run of args.epochs epochs in a single train() call."""
    loop = TrainerLoop(args, data, diagnostics, workdir)
    loop.run(args.epochs)
    return loop.result()


# ---- (c): the pytorch/examples reference --------------------------------------------------------


class ExamplesVAE(nn.Module):
    """pytorch/examples vae/main.py's model, verbatim in structure."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(784, 400)
        self.fc21 = nn.Linear(400, 20)
        self.fc22 = nn.Linear(400, 20)
        self.fc3 = nn.Linear(20, 400)
        self.fc4 = nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def examples_loss(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def in_memory_mnist(images_u8: torch.Tensor, transform):
    """A torchvision MNIST that holds the given uint8 images: torchvision's own per-item path
    (PIL image, then the transform) with no files."""
    from torchvision.datasets import MNIST, VisionDataset

    class InMemoryMNIST(MNIST):
        def __init__(self):
            VisionDataset.__init__(self, root="in-memory", transform=transform)
            self.train = True
            self.data = images_u8[:, 0].contiguous()
            self.targets = torch.zeros(len(images_u8), dtype=torch.long)

    return InMemoryMNIST()


def reference_datasets(data: dict, workdir: Path) -> tuple[object, object, dict]:
    """torchvision MNIST train/test sets with ToTensor, as pytorch/examples builds them."""
    from torchvision import datasets, transforms

    to_tensor = transforms.ToTensor()
    if data["kind"] == "synthetic":
        train_set = in_memory_mnist(data["splits"].train, to_tensor)
        test_set = in_memory_mnist(data["splits"].test, to_tensor)
        return train_set, test_set, {"source": "in-memory torchvision MNIST of the synthetic "
                                               "images (torchvision's own __getitem__)"}
    root = Path(data["root"])
    note: dict = {"data_root": str(root)}
    try:
        train_set = datasets.MNIST(str(root), train=True, download=False, transform=to_tensor)
        test_set = datasets.MNIST(str(root), train=False, download=False, transform=to_tensor)
        note["source"] = "torchvision MNIST read the data root directly"
        return train_set, test_set, note
    except RuntimeError as error:  # torchvision wants the decompressed IDX files
        note["torchvision_on_data_root"] = f"{type(error).__name__}: {error}"
    copy_root = workdir / "torchvision_root"
    raw = copy_root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    source_raw = root / "MNIST" / "raw"
    for name in MNIST_FILES:
        plain, packed = source_raw / name, source_raw / f"{name}.gz"
        if plain.is_file():
            shutil.copyfile(plain, raw / name)
        else:
            with gzip.open(packed, "rb") as src, open(raw / name, "wb") as dst:
                shutil.copyfileobj(src, dst)
    train_set = datasets.MNIST(str(copy_root), train=True, download=False, transform=to_tensor)
    test_set = datasets.MNIST(str(copy_root), train=False, download=False, transform=to_tensor)
    note["source"] = (f"torchvision MNIST on a decompressed copy in {copy_root} (the data root "
                      "holds only .gz files, which torchvision 0.29 does not read without "
                      "download=True)")
    return train_set, test_set, note


class ReferenceLoop:
    """pytorch/examples vae/main.py's train() and test() on CPU (no workers), epoch by epoch."""

    batch_size, log_interval = 128, 10

    def __init__(self, args: argparse.Namespace, data: dict, workdir: Path):
        self.device = resolve_device(args.device)
        self.steps = args.steps
        train_set, test_set, self.note = reference_datasets(data, workdir)
        kwargs = {"num_workers": 1, "pin_memory": True} if self.device.type == "cuda" else {}
        self.train_loader = torch.utils.data.DataLoader(train_set, batch_size=self.batch_size,
                                                        shuffle=True, **kwargs)
        self.test_loader = torch.utils.data.DataLoader(test_set, batch_size=self.batch_size,
                                                       shuffle=False, **kwargs)
        torch.manual_seed(args.seed)
        self.model = ExamplesVAE().to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.images_dir = workdir / "reference_results"
        self.images_dir.mkdir(exist_ok=True)
        self.log_sink = io.StringIO()  # the examples print every log_interval batches
        self.epochs_done = 0
        self.epoch_seconds: list[float] = []
        self.eval_seconds: list[float] = []
        self.test_elbo: dict[int, float] = {}
        self.examples_seen: list[int] = []
        self.cpu: list[dict] = []
        self.load_before = load_now()

    def run(self, epochs: int) -> None:
        for epoch in range(self.epochs_done + 1, epochs + 1):
            meter = CpuMeter()
            self.train_epoch(epoch)
            self.test(epoch)
            self.cpu.append(meter.stop())
        self.epochs_done = epochs

    def train_epoch(self, epoch: int) -> None:
        model, optimizer, device = self.model, self.optimizer, self.device
        start = time.perf_counter()
        model.train()
        train_loss, seen = 0.0, 0
        for batch_idx, (batch, _) in enumerate(self.train_loader):
            if self.steps and batch_idx >= self.steps:
                break
            batch = batch.to(device)
            optimizer.zero_grad()
            recon_batch, mu, logvar = model(batch)
            loss = examples_loss(recon_batch, batch, mu, logvar)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
            seen += len(batch)
            if batch_idx % self.log_interval == 0:
                print(f"Train Epoch: {epoch} [{batch_idx * len(batch)}/"
                      f"{len(self.train_loader.dataset)} "
                      f"({100.0 * batch_idx / len(self.train_loader):.0f}%)]\t"
                      f"Loss: {loss.item() / len(batch):.6f}", file=self.log_sink)
        synchronize(device)
        self.epoch_seconds.append(time.perf_counter() - start)
        self.examples_seen.append(seen)
        print(f"====> Epoch: {epoch} Average loss: {train_loss / max(seen, 1):.4f}",
              file=self.log_sink)

    def test(self, epoch: int) -> None:
        from torchvision.utils import save_image

        model, device = self.model, self.device
        start = time.perf_counter()
        model.eval()
        test_loss = 0.0
        with torch.no_grad():
            for i, (batch, _) in enumerate(self.test_loader):
                batch = batch.to(device)
                recon_batch, mu, logvar = model(batch)
                test_loss += examples_loss(recon_batch, batch, mu, logvar).item()
                if i == 0:
                    n = min(batch.size(0), 8)
                    comparison = torch.cat([batch[:n], recon_batch.view(
                        self.batch_size, 1, 28, 28)[:n]])
                    save_image(comparison.cpu(),
                               self.images_dir / f"reconstruction_{epoch}.png", nrow=n)
        test_loss /= len(self.test_loader.dataset)
        with torch.no_grad():  # the examples' main loop: 64 samples per epoch
            sample = model.decode(torch.randn(64, 20).to(device)).cpu()
            save_image(sample.view(64, 1, 28, 28), self.images_dir / f"sample_{epoch}.png")
        self.eval_seconds.append(time.perf_counter() - start)
        self.test_elbo[epoch] = -test_loss

    def result(self) -> dict:
        return {"epoch_seconds": self.epoch_seconds, "eval_seconds": self.eval_seconds,
                "test_elbo": self.test_elbo, "examples_per_epoch": self.examples_seen,
                "data": self.note, "load_before": self.load_before, "load_after": load_now(),
                "cpu": merge_cpu(self.cpu)}


# ---- IWAE k=1000, in a subprocess ---------------------------------------------------------------


def iwae_worker(spec_json: str) -> None:
    """Run in a fresh process: load the trained model, time evaluate_iwae, report peak RSS."""
    from hydra import compose, initialize_config_dir

    import vae_bench.cli  # noqa: F401
    from vae_bench.config import config_dir, data_root
    from vae_bench.data import load_splits
    from vae_bench.estimators import evaluate_iwae
    from vae_bench.models import VAE
    from vae_bench.train import IWAE_ROWS, pick_device, synthetic_sizes

    spec = json.loads(spec_json)
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config_name="train", overrides=spec["overrides"])
    device = pick_device(cfg.trainer.device)
    splits = load_splits(cfg.dataset.name, data_root(cfg), False,
                         **synthetic_sizes(cfg.dataset), synthetic_seed=cfg.seed)
    model = VAE(cfg, splits.image_shape).to(device)
    payload = torch.load(Path(spec["run_dir"]) / "checkpoints" / "last.pt", map_location=device,
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


def run_iwae(args: argparse.Namespace, trainer_result: dict) -> dict:
    overrides = [o for o in trainer_result["overrides"] if not o.startswith("eval.iwae")]
    spec = {"overrides": overrides, "run_dir": trainer_result["run_dir"], "k": args.iwae_k,
            "examples": args.iwae_examples, "threads": args.threads}
    load_before = load_now()
    process = subprocess.run([sys.executable, __file__, "--iwae-worker", json.dumps(spec)],
                             capture_output=True, text=True)
    if process.returncode != 0:
        raise RuntimeError(f"IWAE subprocess failed:\n{process.stderr[-3000:]}")
    line = next(x for x in process.stdout.splitlines() if x.startswith("IWAE_RESULT "))
    result = json.loads(line.removeprefix("IWAE_RESULT "))
    result.update(load_before=load_before, load_after=load_now(),
                  model_from=trainer_result["run_dir"])
    return result


# ---- data ---------------------------------------------------------------------------------------


def pick_data() -> dict:
    from vae_bench.data import load_splits

    root = os.environ.get("VAE_BENCH_DATA")
    if root:
        # Fail loudly (DataError) rather than fall back when the variable points nowhere.
        load_splits("mnist", root)
        return {"kind": "mnist", "root": root, "num_train": 60000,
                "trainer_overrides": ["dataset=mnist", f"data.root={root}"],
                "note": f"real MNIST from $VAE_BENCH_DATA={root}"}
    overrides = ["dataset=synthetic", "dataset.num_train=60000", "dataset.num_test=10000",
                 "dataset.image_size=28", "dataset.channels=1"]
    return {"kind": "synthetic", "num_train": 60000, "trainer_overrides": overrides,
            "note": "$VAE_BENCH_DATA is not set: SYNTHETIC data with MNIST's shape (60000 + "
                    "10000 images of 1x28x28) for (a)/(b), and an in-memory torchvision MNIST "
                    "of the same images for (c). Test ELBOs are not comparable to MNIST's."}


def load_synthetic_splits(seed: int):
    from vae_bench.data import load_splits

    return load_splits("synthetic", ".", synthetic_num_train=60000, synthetic_num_test=10000,
                       synthetic_image_size=28, synthetic_channels=1, synthetic_seed=seed)


def write_json(path: Path | None, result: dict) -> None:
    """The figures as JSON at --out, when one was given."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {path}")


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
                                        for k, v in vars(args).items() if k != "iwae_worker"},
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
            pairs = [x / y for x, y in zip(loops[top]["epoch_seconds"],
                                           loops[bottom]["epoch_seconds"])]
            paired[name] = {"median": statistics.median(pairs), "per_epoch": pairs}
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
        iw = result["iwae"]
        print(f"IWAE k={iw['k']} on {iw['examples']} test examples: {iw['seconds']:.1f} s, "
              f"NLL {iw['nll_iwae']:.2f}, peak RSS {iw['peak_rss_mib']:.0f} MiB "
              f"({iw['peak_rss_mib_before_iwae']:.0f} MiB before IWAE), load "
              f"{iw['load_before']} -> {iw['load_after']}")


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.iwae_worker:
        iwae_worker(args.iwae_worker)
        return None
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
            iwae = run_iwae(args, source)
        machine["load_end"] = load_now()
        result = summarize(args, data, results, matmul, peak_rss_a, iwae, machine)
    print_report(result)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
