"""The reference loop of scripts/bench.py: pytorch/examples' vae/main.py (torchvision `MNIST`
through a `DataLoader` with `ToTensor`, the 784-400-20 MLP, sigmoid + BCE(sum) + KL, and its
per-epoch test loop), run epoch by epoch on the CPU without workers."""

from __future__ import annotations

import argparse
import gzip
import io
import shutil
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from benchkit.machine import CpuMeter, load_now, merge_cpu, resolve_device, synchronize

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
               "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


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



def load_synthetic_splits(seed: int):
    """The synthetic images of MNIST's shape that the trainer gets without $VAE_BENCH_DATA."""
    from vae_bench.data import load_splits

    return load_splits("synthetic", ".", synthetic_num_train=60000, synthetic_num_test=10000,
                       synthetic_image_size=28, synthetic_channels=1, synthetic_seed=seed)
