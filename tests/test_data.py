"""vae_bench.data on tiny files written here in the real formats (IDX, .gz, CIFAR pickles)."""

from __future__ import annotations

import os
import pickle
import re
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from datafiles import (  # noqa: E402
    IMAGE_MAGIC,
    LABEL_MAGIC,
    cifar_batch_bytes,
    idx_bytes,
    write_cifar,
    write_file,
    write_idx_set,
)

from vae_bench import data
from vae_bench.data import DATASET_NAMES, DataError, Splits, load_splits, to_float

SHARED_CIFAR_JPEG = Path(os.environ.get("VAE_BENCH_DATA", "/nonexistent")) / "CIFAR10-JPEG"


def listing(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*"))


def raises_data_error(*texts: str, **kwargs) -> str:
    """load_splits(**kwargs) must raise DataError mentioning every text; returns the message."""
    with pytest.raises(DataError) as info:
        load_splits(**kwargs)
    message = str(info.value)
    for text in texts:
        assert text in message
    return message


# ---- reading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_round_trips_exactly(tmp_path: Path, gz: bool) -> None:
    train, test = write_idx_set(tmp_path, gz=gz)
    splits = load_splits("mnist", tmp_path)
    assert splits.train.dtype == torch.uint8
    assert splits.train.shape == (5, 1, 28, 28)
    assert splits.test.shape == (3, 1, 28, 28)
    assert splits.train.is_contiguous() and splits.test.is_contiguous()
    assert torch.equal(splits.train[:, 0], torch.from_numpy(train))
    assert torch.equal(splits.test[:, 0], torch.from_numpy(test))
    assert splits.image_shape == (1, 28, 28)


def test_binarized_mnist_reads_the_mnist_files(tmp_path: Path) -> None:
    write_idx_set(tmp_path, gz=True)
    binarized = load_splits("binarized_mnist", tmp_path)
    plain = load_splits("mnist", tmp_path)
    assert torch.equal(binarized.train, plain.train)


def test_fashion_mnist_reads_its_own_folder(tmp_path: Path) -> None:
    train, _ = write_idx_set(tmp_path, folder="FashionMNIST")
    assert torch.equal(load_splits("fashion_mnist", tmp_path).train[:, 0], torch.from_numpy(train))
    raises_data_error("holding MNIST/raw", name="mnist", root=tmp_path)


def test_plain_file_is_preferred_over_its_gz_twin(tmp_path: Path) -> None:
    train, _ = write_idx_set(tmp_path)
    # A broken .gz beside a good plain file must not be touched.
    (tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").write_bytes(b"broken")
    assert torch.equal(load_splits("mnist", tmp_path).train[:, 0], torch.from_numpy(train))


def test_cifar_layout_and_channel_order(tmp_path: Path) -> None:
    train, test = write_cifar(tmp_path)
    splits = load_splits("cifar10", tmp_path)
    assert splits.train.dtype == torch.uint8 and splits.train.is_contiguous()
    assert splits.train.shape == (10, 3, 32, 32) and splits.test.shape == (2, 3, 32, 32)
    assert torch.equal(splits.train, torch.from_numpy(train))
    assert torch.equal(splits.test, torch.from_numpy(test))
    assert splits.image_shape == (3, 32, 32)


def test_cifar_rows_are_red_then_green_then_blue(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.full(1024, 30)])
    row[1] = 99  # red plane, row 0, column 1
    write_file(tmp_path / "cifar-10-batches-py" / "test_batch",
               cifar_batch_bytes(row.astype(np.uint8)[None], [3]))
    image = load_splits("cifar10", tmp_path).test[0]
    assert image[0, 0, 1] == 99
    assert image[0, 1, 0] == 10 and image[1].unique().tolist() == [20]
    assert image[2].unique().tolist() == [30]


@pytest.mark.parametrize("writer", ["mnist_gz", "cifar"])
def test_reading_writes_nothing(tmp_path: Path, writer: str) -> None:
    if writer == "cifar":
        write_cifar(tmp_path)
        name = "cifar10"
    else:
        write_idx_set(tmp_path, gz=True)
        name = "mnist"
    before = listing(tmp_path)
    load_splits(name, tmp_path)
    assert listing(tmp_path) == before


def test_real_mnist() -> None:
    root = os.environ.get("VAE_BENCH_DATA")
    if not root or not (Path(root) / "MNIST" / "raw").is_dir():
        pytest.skip("VAE_BENCH_DATA does not point at a folder holding MNIST/raw")
    splits = load_splits("mnist", root)
    assert splits.train.shape == (60000, 1, 28, 28)
    assert splits.test.shape == (10000, 1, 28, 28)
    assert splits.train.dtype == torch.uint8
    mean = splits.train.sum(dtype=torch.int64).item() / splits.train.numel() / 255
    assert mean == pytest.approx(0.1307, abs=1e-4)


# ---- synthetic ----------------------------------------------------------------------------------


def test_synthetic_is_deterministic_in_the_seed(tmp_path: Path) -> None:
    first = load_splits("synthetic", tmp_path, synthetic_seed=3)
    again = load_splits("synthetic", tmp_path, synthetic_seed=3)
    other = load_splits("synthetic", tmp_path, synthetic_seed=4)
    assert torch.equal(first.train, again.train) and torch.equal(first.test, again.test)
    assert not torch.equal(first.train, other.train)
    assert not torch.equal(first.train[:512], first.test)
    assert listing(tmp_path) == []


def test_synthetic_shape_range_and_structure() -> None:
    splits = load_splits("synthetic", "unused", synthetic_num_train=64, synthetic_num_test=16,
                         synthetic_image_size=32, synthetic_channels=3)
    assert isinstance(splits, Splits)
    assert splits.train.shape == (64, 3, 32, 32) and splits.test.shape == (16, 3, 32, 32)
    assert splits.train.dtype == torch.uint8 and splits.train.is_contiguous()
    # Bright shapes on a dark background: not noise, and not blank.
    assert splits.train.float().median() < 10
    assert splits.train.amax(dim=(1, 2, 3)).min() > 100
    assert len({image.numpy().tobytes() for image in splits.train}) == 64


def test_synthetic_rejects_empty_splits() -> None:
    raises_data_error("synthetic_num_train", name="synthetic", root=".", synthetic_num_train=0)


def test_unknown_name_lists_the_choices() -> None:
    raises_data_error("svhn", *DATASET_NAMES, name="svhn", root=".")


# ---- to_float -----------------------------------------------------------------------------------


def test_to_float_scales_to_unit_interval() -> None:
    batch = torch.tensor([0, 51, 255], dtype=torch.uint8)
    out = to_float(batch, binarize=False)
    assert out.dtype == torch.float32 and out.device == batch.device
    assert torch.allclose(out, torch.tensor([0.0, 0.2, 1.0]))


def test_to_float_binarizes_from_the_generator_state() -> None:
    batch = torch.full((64, 1, 28, 28), 128, dtype=torch.uint8)
    generator = torch.Generator().manual_seed(0)
    first = to_float(batch, binarize=True, generator=generator)
    second = to_float(batch, binarize=True, generator=generator)
    replay = to_float(batch, binarize=True, generator=torch.Generator().manual_seed(0))
    assert set(first.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(first, second)  # resampled on every call
    assert torch.equal(first, replay)  # reproducible from the generator state
    assert first.mean().item() == pytest.approx(128 / 255, abs=0.02)
    extremes = to_float(torch.tensor([0, 255], dtype=torch.uint8), True, generator)
    assert extremes.tolist() == [0.0, 1.0]


def test_to_float_refuses_a_float_batch() -> None:
    with pytest.raises(TypeError, match="uint8"):
        to_float(torch.zeros(2), binarize=False)


# ---- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST/raw"),
                                              ("fashion_mnist", "FashionMNIST/raw"),
                                              ("cifar10", "cifar-10-batches-py")])
def test_missing_files_say_how_to_fix_it(tmp_path: Path, name: str, folder: str) -> None:
    message = raises_data_error(str(tmp_path), folder, "dataset=synthetic", "data.root=",
                                "data.download=true", "VAE_BENCH_DATA", name=name, root=tmp_path)
    assert "\n" not in message


def test_missing_message_names_the_absolute_root(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    raises_data_error(str(tmp_path / "data"), "train-images-idx3-ubyte", name="mnist", root="data")


def test_one_missing_file_is_named(tmp_path: Path) -> None:
    write_idx_set(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    message = raises_data_error("MNIST/raw/t10k-labels-idx1-ubyte", name="mnist", root=tmp_path)
    assert "train-images" not in message


def corrupt(tmp_path: Path, file: str, payload: bytes, gz: bool = False) -> str:
    """A valid MNIST set with one file replaced; returns the replaced file's path."""
    write_idx_set(tmp_path, gz=gz)
    return str(write_file(tmp_path / "MNIST" / "raw" / file, payload, gz))


def test_truncated_file(tmp_path: Path) -> None:
    images = np.zeros((5, 28, 28), dtype=np.uint8)
    path = corrupt(tmp_path, "train-images-idx3-ubyte", idx_bytes(images, IMAGE_MAGIC)[:-10])
    raises_data_error(path, "3910", "3920", name="mnist", root=tmp_path)


def test_truncated_header(tmp_path: Path) -> None:
    path = corrupt(tmp_path, "t10k-labels-idx1-ubyte", b"\x00\x00")
    raises_data_error(path, "2 bytes", name="mnist", root=tmp_path)


def test_wrong_magic(tmp_path: Path) -> None:
    images = np.zeros((5, 28, 28), dtype=np.uint8)
    # A label magic on an image file: the kind of mix-up a renamed file makes.
    path = corrupt(tmp_path, "train-images-idx3-ubyte", idx_bytes(images, LABEL_MAGIC), gz=True)
    raises_data_error(path, "2049", "2051", name="mnist", root=tmp_path)


def test_wrong_image_shape(tmp_path: Path) -> None:
    images = np.zeros((5, 27, 28), dtype=np.uint8)
    path = corrupt(tmp_path, "train-images-idx3-ubyte", idx_bytes(images, IMAGE_MAGIC))
    raises_data_error(path, "27x28", "28x28", name="mnist", root=tmp_path)


def test_image_and_label_counts_must_match(tmp_path: Path) -> None:
    labels = np.zeros(4, dtype=np.uint8)
    path = corrupt(tmp_path, "train-labels-idx1-ubyte", idx_bytes(labels, LABEL_MAGIC))
    raises_data_error(path, "4 labels", "5", name="mnist", root=tmp_path)


@pytest.mark.parametrize("damage", ["not_gzip", "truncated"])
def test_corrupt_gzip(tmp_path: Path, damage: str) -> None:
    write_idx_set(tmp_path, gz=True)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz"
    payload = path.read_bytes()
    path.write_bytes(b"this is not gzip" if damage == "not_gzip" else payload[: len(payload) // 2])
    raises_data_error(str(path), name="mnist", root=tmp_path)


@pytest.mark.parametrize(("payload", "expected"), [
    (cifar_batch_bytes(np.zeros((2, 3072), np.uint8), [0, 0])[:-5], "unreadable pickle"),
    (pickle.dumps({b"labels": [0, 0]}), "b'data'"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "b'labels'"),
    (cifar_batch_bytes(np.zeros((2, 1024), np.uint8), [0, 0]), "(2, 1024)"),
    (cifar_batch_bytes(np.zeros((2, 3072), np.uint8), [0]), "1 labels"),
])
def test_bad_cifar_batch(tmp_path: Path, payload: bytes, expected: str) -> None:
    write_cifar(tmp_path)
    path = write_file(tmp_path / "cifar-10-batches-py" / "data_batch_3", payload)
    raises_data_error(str(path), expected, name="cifar10", root=tmp_path)


# ---- download -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "torchvision_class"), [("mnist", "MNIST"),
                                                         ("fashion_mnist", "FashionMNIST"),
                                                         ("cifar10", "CIFAR10")])
def test_failed_download_is_a_data_error(tmp_path: Path, monkeypatch, name: str,
                                         torchvision_class: str) -> None:
    def offline(*args, **kwargs):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(torchvision.datasets, torchvision_class, offline)
    message = raises_data_error("failed", "Network is unreachable", str(tmp_path),
                                "dataset=synthetic", name=name, root=tmp_path, download=True)
    assert re.search(r"download", message, re.IGNORECASE)


def test_download_fills_the_torchvision_layout_then_reads_it(tmp_path: Path, monkeypatch) -> None:
    calls = []

    def fake_download(root: str, train: bool, download: bool) -> None:
        calls.append((root, train, download))
        write_idx_set(Path(root), folder="FashionMNIST", gz=True)

    monkeypatch.setattr(torchvision.datasets, "FashionMNIST", fake_download)
    splits = load_splits("fashion_mnist", tmp_path, download=True)
    assert len(calls) == 1 and calls[0][1:] == (True, True)
    # Fetched into a staging folder under the root, then moved into place; nothing else stays.
    assert Path(calls[0][0]).parent == tmp_path
    assert listing(tmp_path) == ["FashionMNIST", "FashionMNIST/raw", *[
        f"FashionMNIST/raw/{split}-{kind}-ubyte.gz" for split in ("t10k", "train")
        for kind in ("images-idx3", "labels-idx1")]]
    assert splits.train.shape == (5, 1, 28, 28)


def test_a_failed_download_leaves_nothing_half_written(tmp_path: Path, monkeypatch) -> None:
    def cut_off(root: str, train: bool, download: bool) -> None:
        raw = Path(root) / "MNIST" / "raw"
        raw.mkdir(parents=True)
        (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b half a file")
        raise ConnectionResetError("Connection reset by peer")

    monkeypatch.setattr(torchvision.datasets, "MNIST", cut_off)
    message = raises_data_error("downloading it failed", "Connection reset by peer",
                                "MNIST/raw/train-images-idx3-ubyte", "dataset=synthetic",
                                name="mnist", root=tmp_path, download=True)
    assert "\n" not in message
    assert listing(tmp_path) == []


def test_download_has_a_bounded_wait(tmp_path: Path, monkeypatch) -> None:
    """A mirror that accepts the connection and never answers (a black-holed proxy) ends the
    download after DOWNLOAD_TIMEOUT_S, not never. The server is on this machine: no network."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # the kernel completes the handshakes; nothing ever answers them
    port = server.getsockname()[1]
    monkeypatch.setattr(data, "DOWNLOAD_TIMEOUT_S", 1)
    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", [f"http://127.0.0.1:{port}/"])
    start = time.monotonic()
    try:
        raises_data_error("downloading it failed", "timed out", name="mnist", root=tmp_path,
                          download=True)
    finally:
        server.close()
    assert time.monotonic() - start < 30
    assert socket.getdefaulttimeout() is None  # the process-wide timeout is given back
    assert listing(tmp_path) == []


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_a_partial_copy_is_never_downloaded_over(tmp_path: Path, monkeypatch, name: str) -> None:
    def must_not_run(*args, **kwargs):
        raise AssertionError("downloaded over files that are there")

    monkeypatch.setattr(data, "fetch_with_torchvision", must_not_run)
    if name == "cifar10":
        write_cifar(tmp_path)
        missing = tmp_path / "cifar-10-batches-py" / "test_batch"
    else:
        write_idx_set(tmp_path, gz=True)
        missing = tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    missing.unlink()
    before = listing(tmp_path)
    raises_data_error("incomplete", missing.name.removesuffix(".gz"), "delete the other files",
                      name=name, root=tmp_path, download=True)
    assert listing(tmp_path) == before


@pytest.mark.skipif(not (SHARED_CIFAR_JPEG / "cifar-10-batches-py").is_dir(),
                    reason="the shared CIFAR-10 JPEG copy is not on this machine")
def test_the_cifar_jpeg_copy_is_read_and_never_downloaded_over(monkeypatch) -> None:
    def must_not_run(*args, **kwargs):
        raise AssertionError("downloaded over the JPEG copy")

    monkeypatch.setattr(data, "fetch_with_torchvision", must_not_run)
    data.ensure_files("cifar10", SHARED_CIFAR_JPEG, download=True)


def test_no_download_when_the_files_are_there(tmp_path: Path, monkeypatch) -> None:
    def must_not_run(*args, **kwargs):
        raise AssertionError("downloaded although the files exist")

    monkeypatch.setattr(torchvision.datasets, "MNIST", must_not_run)
    write_idx_set(tmp_path, gz=True)
    assert load_splits("mnist", tmp_path, download=True).test.shape == (3, 1, 28, 28)


def test_a_cifar_copy_is_labelled_by_its_checksums(tmp_path: Path, monkeypatch) -> None:
    import hashlib

    import vae_bench.data as data

    write_cifar(tmp_path)
    assert data.dataset_label("cifar10", tmp_path) == \
        "CIFAR-10 (a modified copy: not the original files)"
    folder = tmp_path / "cifar-10-batches-py"
    these = {name: hashlib.md5((folder / name).read_bytes()).hexdigest()
             for name in data.CIFAR_ORIGINAL_MD5}
    monkeypatch.setattr(data, "CIFAR_ORIGINAL_MD5", these)
    assert data.dataset_label("cifar10", tmp_path) == "CIFAR-10"
    monkeypatch.setattr(data, "CIFAR_ORIGINAL_MD5", {})
    monkeypatch.setattr(data, "CIFAR_JPEG_MD5", these)
    assert data.dataset_label("cifar10", tmp_path) == "CIFAR-10 (JPEG re-encoding)"
    assert data.dataset_label("fashion_mnist", tmp_path) == "Fashion-MNIST"


def test_the_shared_cifar_copy_is_labelled_a_jpeg_re_encoding() -> None:
    root = Path(os.environ.get("VAE_BENCH_DATA", "/nonexistent")) / "CIFAR10-JPEG"
    if not (root / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.skip("the CIFAR-10 JPEG copy is not here (set VAE_BENCH_DATA)")
    from vae_bench.data import dataset_label

    assert dataset_label("cifar10", root) == "CIFAR-10 (JPEG re-encoding)"
