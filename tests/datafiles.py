"""Writers of tiny data-set files in the real formats (IDX, optionally .gz; CIFAR-10 pickles)."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np

IMAGE_MAGIC = 2051
LABEL_MAGIC = 2049


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    """An IDX file: big-endian magic, one big-endian int32 per dimension, then the bytes."""
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + array.astype(np.uint8).tobytes()


def write_file(path: Path, payload: bytes, gz: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        path = path.with_name(path.name + ".gz")
        payload = gzip.compress(payload)
    path.write_bytes(payload)
    return path


def write_idx_set(
    root: Path, folder: str = "MNIST", gz: bool = False, n_train: int = 5, n_test: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Both splits of an MNIST-style data set under root/folder/raw; returns the images."""
    rng = np.random.default_rng(0)
    written = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        raw = root / folder / "raw"
        write_file(raw / f"{prefix}-images-idx3-ubyte", idx_bytes(images, IMAGE_MAGIC), gz)
        write_file(raw / f"{prefix}-labels-idx1-ubyte", idx_bytes(labels, LABEL_MAGIC), gz)
        written.append(images)
    return written[0], written[1]


def cifar_batch_bytes(data: np.ndarray, labels: list[int]) -> bytes:
    # Keys are bytes, as the real (python 2) pickles give under encoding="bytes".
    return pickle.dumps({b"batch_label": b"test", b"labels": labels, b"data": data})


def write_cifar(root: Path, n_per_batch: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """The six CIFAR-10 batches under root/cifar-10-batches-py; returns (N, 3, 32, 32) images."""
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    images = rng.integers(0, 256, size=(len(names), n_per_batch, 3, 32, 32), dtype=np.uint8)
    for name, batch in zip(names, images, strict=True):
        rows = batch.reshape(n_per_batch, 3072)
        write_file(folder / name, cifar_batch_bytes(rows, [0] * n_per_batch))
    return images[:5].reshape(-1, 3, 32, 32), images[5]
