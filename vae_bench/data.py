"""Data sets as whole uint8 tensors: the only module that knows data-set file formats.

`load_splits` returns both splits as CPU uint8 tensors of shape (N, C, H, W), read straight from
the files torchvision's downloads leave behind (IDX for MNIST / Fashion-MNIST, python pickles for
CIFAR-10). Conversion to float, and dynamic binarization, happen per batch in `to_float`, on
whatever device the batch already lives on. Every problem becomes a `DataError` whose message is
one paragraph the user can act on.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.metadata
import math
import os
import pickle
import shutil
import socket
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class DataError(Exception):
    """A data set could not be read; the message is one clear paragraph for the user."""


DATASET_NAMES = ("mnist", "binarized_mnist", "fashion_mnist", "cifar10", "synthetic")

# Folder under the data root and the torchvision class that downloads into it.
IDX_FOLDERS = {"mnist": "MNIST", "binarized_mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
TORCHVISION_CLASSES = {
    "mnist": "MNIST",
    "binarized_mnist": "MNIST",
    "fashion_mnist": "FashionMNIST",
    "cifar10": "CIFAR10",
}
IDX_PREFIXES = ("train", "t10k")  # the train and test split, in IDX file names
IDX_IMAGE_MAGIC = 2051  # 0x0803: unsigned bytes, 3 dimensions (N, rows, cols)
IDX_LABEL_MAGIC = 2049  # 0x0801: unsigned bytes, 1 dimension (N,)
IDX_IMAGE_SIDE = 28
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_FILES = ("test_batch",)
CIFAR_IMAGE_SHAPE = (3, 32, 32)  # rows of the pickles are channel-major: all R, all G, all B
SYNTHETIC_MAX_SHAPES = 3


@dataclass(frozen=True)
class Splits:
    train: torch.Tensor  # uint8, (N, C, H, W), contiguous
    test: torch.Tensor  # uint8, (M, C, H, W)

    def __post_init__(self) -> None:
        for split in (self.train, self.test):
            if split.dtype != torch.uint8 or split.dim() != 4:
                raise ValueError(f"splits must be uint8 (N, C, H, W), got {split.dtype} "
                                 f"{tuple(split.shape)}")
        if self.train.shape[1:] != self.test.shape[1:]:
            raise ValueError(f"train images {tuple(self.train.shape[1:])} and test images "
                             f"{tuple(self.test.shape[1:])} differ in shape")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        channels, height, width = self.train.shape[1:]
        return channels, height, width


def load_splits(
    name: str,
    root: str | os.PathLike,
    download: bool = False,
    *,
    synthetic_num_train: int = 2048,
    synthetic_num_test: int = 512,
    synthetic_image_size: int = 28,
    synthetic_channels: int = 1,
    synthetic_seed: int = 0,
) -> Splits:
    """CPU uint8 tensors for the named data set (binarized_mnist reads the MNIST files)."""
    if name == "synthetic":
        return _synthetic_splits(synthetic_num_train, synthetic_num_test, synthetic_image_size,
                                 synthetic_channels, synthetic_seed)
    if name not in DATASET_NAMES:
        raise DataError(f"Unknown data set {name!r}; choose one of: {', '.join(DATASET_NAMES)}.")
    root_dir = Path(root).expanduser().absolute()
    ensure_files(name, root_dir, download)
    if name == "cifar10":
        train = _read_cifar(root_dir, CIFAR_TRAIN_FILES)
        return Splits(train, _read_cifar(root_dir, CIFAR_TEST_FILES))
    raw = root_dir / IDX_FOLDERS[name] / "raw"
    return Splits(*(_read_idx_split(raw, prefix) for prefix in IDX_PREFIXES))


def ensure_files(name: str, root: str | os.PathLike, download: bool) -> None:
    """check_files, after downloading the data set first where it is absent and `download`
    allows it; the CLI calls this before it creates a run folder."""
    root_dir = Path(root).expanduser().absolute()
    if name != "synthetic" and download and _missing_files(name, root_dir):
        _download(name, root_dir)
    check_files(name, root_dir)


def check_files(name: str, root: str | os.PathLike) -> None:
    """DataError naming every file of the data set missing under `root` (synthetic has none);
    cheap, so the CLI can refuse a run before its folder exists."""
    if name == "synthetic":
        return
    root_dir = Path(root).expanduser().absolute()
    missing = _missing_files(name, root_dir)
    if missing:
        raise DataError(f"Data set {name!r} was not found under the data root {root_dir}: missing "
                        f"{', '.join(missing)}{_gz_note(name)}. {_fixes(name)}")


def to_float(
    batch_u8: torch.Tensor, binarize: bool, generator: torch.Generator | None = None
) -> torch.Tensor:
    """uint8 batch -> float32 in [0,1] (same device). With binarize=True, dynamic binarization:
    each pixel ~ Bernoulli(intensity), drawn with `generator` (must be on the batch's device) so it
    is resampled on every call and reproducible from the generator state."""
    # A float batch here would be a second scaling by 1/255, silently: refuse it.
    if batch_u8.dtype != torch.uint8:
        raise TypeError(f"to_float expects a uint8 batch, got {batch_u8.dtype}")
    if generator is not None and generator.device.type != batch_u8.device.type:
        raise ValueError(f"generator is on {generator.device}, batch is on {batch_u8.device}")
    intensity = batch_u8.float().div_(255.0)
    if not binarize:
        return intensity
    return torch.bernoulli(intensity, generator=generator)


# ---- files: which are expected, which are missing, how to get them -----------------------------


def _expected_files(name: str) -> list[str]:
    """Paths relative to the data root, as torchvision lays them out."""
    if name == "cifar10":
        return [f"{CIFAR_FOLDER}/{file}" for file in CIFAR_TRAIN_FILES + CIFAR_TEST_FILES]
    raw = f"{IDX_FOLDERS[name]}/raw"
    kinds = ("images-idx3-ubyte", "labels-idx1-ubyte")
    return [f"{raw}/{prefix}-{kind}" for prefix in IDX_PREFIXES for kind in kinds]


def _locate(path: Path) -> Path:
    """The IDX file itself, else its .gz twin; the plain path when neither exists."""
    # Plain first: torchvision's download leaves both, and plain needs no decompression.
    gz_path = path.with_name(path.name + ".gz")
    return gz_path if not path.is_file() and gz_path.is_file() else path


def _missing_files(name: str, root: Path) -> list[str]:
    if name == "cifar10":
        return [rel for rel in _expected_files(name) if not (root / rel).is_file()]
    return [rel for rel in _expected_files(name) if not _locate(root / rel).is_file()]


def _gz_note(name: str) -> str:
    return "" if name == "cifar10" else " (each may also be .gz)"


FETCH_HINTS = {
    "off": "data.download=true to fetch it with torchvision (needs network access)",
    "failed": "rerun where this machine can reach the internet (data.download=true, the "
              "default, fetches a missing data set)",
    "partial": None,  # downloading over files already there is what it must not do
}


def _fixes(name: str, download: str = "off") -> str:
    folder = CIFAR_FOLDER if name == "cifar10" else f"{IDX_FOLDERS[name]}/raw"
    fetch = f"{FETCH_HINTS[download]}; " if FETCH_HINTS[download] else ""
    return (f"Fix it with one of these overrides: data.root=<folder holding {folder}> (data.root "
            f"defaults to $VAE_BENCH_DATA, else ./data); {fetch}or dataset=synthetic for an "
            "offline try that needs no files.")


DOWNLOAD_TIMEOUT_S = 30  # per network operation: an unreachable mirror fails instead of hanging


def _download(name: str, root: Path) -> None:
    """Fetch the data set with torchvision into a staging folder beside it, then move the files
    into place: an interrupted or failed download leaves nothing half-written under `root`.
    Only a data set of which no file exists is fetched: a partial copy (or a re-encoded one,
    such as CIFAR-10 as JPEG) is never written over."""
    expected = _expected_files(name)
    missing = _missing_files(name, root)
    if len(missing) < len(expected):
        raise DataError(f"Data set {name!r} is incomplete under the data root {root}: missing "
                        f"{', '.join(missing)}{_gz_note(name)}. vae-bench downloads only a data "
                        "set that is absent, so as not to overwrite the files there: delete the "
                        f"other files of {name!r} to download it afresh. "
                        f"{_fixes(name, 'partial')}")
    staging = root / f".vae_bench_download_{name}_{os.getpid()}"
    try:
        previous_timeout = socket.getdefaulttimeout()
        socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # torchvision's urlopen calls take no timeout
        try:
            fetch_with_torchvision(name, staging)
        except DataError:
            raise
        except Exception as err:  # no network, a proxy, a bad checksum...: all end the same way
            reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
            raise DataError(f"Data set {name!r} was not found under the data root {root}: "
                            f"missing {', '.join(missing)}{_gz_note(name)}; downloading it "
                            f"failed ({reason}). {_fixes(name, 'failed')}") from err
        finally:
            socket.setdefaulttimeout(previous_timeout)
        _move_into_place(staging, root, expected)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _move_into_place(staging: Path, root: Path, expected: Sequence[str]) -> None:
    for relative in expected:
        source = _locate(staging / relative)
        target = root / source.relative_to(staging)
        if not source.is_file():
            raise DataError(f"Downloading {relative} into {staging} left no such file; the "
                            "data set's layout may have changed in this torchvision.")
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():  # another job of a sweep may have moved its own copy here
            os.replace(source, target)


def fetch_with_torchvision(name: str, folder: Path) -> None:
    """The network part of a download: torchvision's class for the data set fetches it into
    `folder` in torchvision's layout (both splits at once)."""
    datasets = import_torchvision_datasets()
    dataset_class = getattr(datasets, TORCHVISION_CLASSES[name])
    dataset_class(str(folder), train=True, download=True)


def import_torchvision_datasets():
    """torchvision.datasets, or a DataError naming both versions when this torchvision cannot
    load beside this torch (a build for another torch version, or CUDA against a CPU torch:
    `operator torchvision::nms does not exist`). Only downloads need torchvision."""
    try:
        import torchvision.datasets
    except Exception as err:
        raise DataError(torchvision_mismatch(err)) from err
    return torchvision.datasets


def torchvision_mismatch(error: BaseException) -> str:
    torch_version = torch.__version__
    try:
        vision_version = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        vision_version = "(not installed)"
    major, minor = (int(part) for part in torch_version.split("+")[0].split(".")[:2])
    # torchvision 0.N+15 goes with torch 2.N (0.15 with 2.0, ..., 0.29 with 2.14).
    matching = f"0.{minor + 15}" if major == 2 else "the release listed for it on pytorch.org"
    build = torch_version.partition("+")[2]
    if not build:  # PyPI's Linux wheels carry no label: a CUDA build, or a CPU one elsewhere
        build = f"cu{torch.version.cuda.replace('.', '')}" if torch.version.cuda else "cpu"
    reason = " ".join(f"{type(error).__name__}: {error}".split())[:200]
    return (f"torchvision {vision_version} cannot be loaded with torch {torch_version} ({reason}): "
            "it was built for another torch version or device. Install the torchvision built "
            "for this torch: `pip install --force-reinstall --no-deps "
            f"torchvision=={matching}.* --index-url https://download.pytorch.org/whl/{build}` "
            "(only downloading a data set needs torchvision; training on files already under "
            "data.root does not).")


def _bad_file(path: Path, found: str, expected: str) -> DataError:
    return DataError(f"Cannot use the data file {path}: found {found}, expected {expected}. The "
                     "file is truncated, corrupt, or not the file its name says; replace it with "
                     "a good copy, or delete it and rerun with data.download=true.")


# ---- IDX (MNIST, Fashion-MNIST) -----------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    """Whole file contents; a .gz is decompressed in memory so nothing is written beside it."""
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as file:
                return file.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as err:
        raise _bad_file(path, f"an unreadable file ({type(err).__name__}: {err})",
                        "a readable file, gzip-compressed if its name ends in .gz") from err


def _read_idx(path: Path, expected_magic: int) -> np.ndarray:
    raw = _read_bytes(path)
    ndim = expected_magic & 0xFF  # the magic number's low byte is the number of dimensions
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise _bad_file(path, f"only {len(raw)} bytes", f"an IDX header of {header_len} bytes")
    magic = int.from_bytes(raw[:4], "big")
    if magic != expected_magic:
        raise _bad_file(path, f"IDX magic number {magic}",
                        f"{expected_magic} (unsigned bytes, {ndim} dimension(s))")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    payload_len = len(raw) - header_len
    if payload_len != math.prod(dims) or min(dims) < 0:
        raise _bad_file(path, f"{payload_len} data bytes after the header",
                        f"{math.prod(dims)} for the header's dimensions {dims}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)


def _read_idx_split(raw: Path, prefix: str) -> torch.Tensor:
    images_path = _locate(raw / f"{prefix}-images-idx3-ubyte")
    labels_path = _locate(raw / f"{prefix}-labels-idx1-ubyte")
    images = _read_idx(images_path, IDX_IMAGE_MAGIC)
    labels = _read_idx(labels_path, IDX_LABEL_MAGIC)
    side = IDX_IMAGE_SIDE
    if images.shape[1:] != (side, side):
        raise _bad_file(images_path, f"images of {images.shape[1]}x{images.shape[2]}",
                        f"{side}x{side}")
    # Labels are not used, but a matching count shows the two files belong together.
    if len(labels) != len(images):
        raise _bad_file(labels_path, f"{len(labels)} labels",
                        f"{len(images)}, one per image in {images_path}")
    # Copy: frombuffer views are read-only, and the tensor should own its memory.
    return torch.from_numpy(images.copy()).unsqueeze(1)


# ---- CIFAR-10 python pickles --------------------------------------------------------------------


def _read_cifar_batch(path: Path) -> np.ndarray:
    try:
        with open(path, "rb") as file:
            batch = pickle.load(file, encoding="bytes")
    except Exception as err:  # a corrupt pickle can fail in many ways; none may reach the user raw
        raise _bad_file(path, f"an unreadable pickle ({type(err).__name__}: {err})",
                        "a CIFAR-10 python batch") from err
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        found = f"keys {list(batch)}" if isinstance(batch, dict) else f"a {type(batch).__name__}"
        raise _bad_file(path, found, "a dict with keys b'data' and b'labels'")
    data = batch[b"data"]
    width = math.prod(CIFAR_IMAGE_SHAPE)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (width,):
        found = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data)
        raise _bad_file(path, f"b'data' of {found}", f"a uint8 array of shape (N, {width})")
    if len(batch[b"labels"]) != len(data):
        raise _bad_file(path, f"{len(batch[b'labels'])} labels", f"{len(data)}, one per image")
    return data


def _read_cifar(root: Path, files: Sequence[str]) -> torch.Tensor:
    batches = [_read_cifar_batch(root / CIFAR_FOLDER / file) for file in files]
    # concatenate copies into one fresh array, so the tensor owns contiguous memory.
    return torch.from_numpy(np.concatenate(batches)).reshape(-1, *CIFAR_IMAGE_SHAPE)


# ---- synthetic ----------------------------------------------------------------------------------


def _synthetic_splits(num_train: int, num_test: int, size: int, channels: int,
                      seed: int) -> Splits:
    for key, value in (("synthetic_num_train", num_train), ("synthetic_num_test", num_test),
                       ("synthetic_image_size", size), ("synthetic_channels", channels)):
        if value < 1:
            raise DataError(f"Synthetic data needs {key} >= 1, got {value}.")
    generator = torch.Generator().manual_seed(seed)
    # Test continues the train draws, so the two differ and train does not depend on num_test.
    train = _synthetic_images(num_train, channels, size, generator)
    test = _synthetic_images(num_test, channels, size, generator)
    return Splits(train, test)


def _synthetic_images(n: int, channels: int, size: int,
                      generator: torch.Generator) -> torch.Tensor:
    """n images of 1-3 soft Gaussian shapes (round blobs or elongated bars) on black."""
    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, *shape, generator=generator)

    centres = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    rows, cols = centres.view(1, size, 1), centres.view(1, 1, size)
    images = torch.zeros(n, channels, size, size)
    for slot in range(SYNTHETIC_MAX_SHAPES):
        # Slot 0 always draws a shape and the others half the time: 1 to 3 shapes per image.
        present = uniform(0, 1) < (1.0 if slot == 0 else 0.5)
        centre_y, centre_x = uniform(0.2, 0.8, 1, 1), uniform(0.2, 0.8, 1, 1)
        angle = uniform(0, math.pi, 1, 1)
        width = uniform(0.05, 0.12, 1, 1)
        is_bar = uniform(0, 1, 1, 1) < 0.5
        length = torch.where(is_bar, width * uniform(2.5, 4.0, 1, 1), width)
        colour = uniform(0.6, 1.0, channels, 1, 1) * present.view(n, 1, 1, 1)
        # Distances along and across the shape's own axis, then an anisotropic Gaussian bump.
        dy, dx = rows - centre_y, cols - centre_x
        along = dx * angle.cos() + dy * angle.sin()
        across = dy * angle.cos() - dx * angle.sin()
        bump = torch.exp(-0.5 * ((along / length) ** 2 + (across / width) ** 2))
        images += colour * bump.unsqueeze(1)
    return images.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


# ---- what a result was measured on --------------------------------------------------------------

# The original CIFAR-10 python batches (their md5, as torchvision lists them), and the JPEG
# re-encoding kept in this project's shared data (same images, labels, order and split, lossy
# pixels: its bits/dim are not comparable with published CIFAR-10 figures).
CIFAR_ORIGINAL_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CIFAR_JPEG_MD5 = {
    "data_batch_1": "ea16bddd9af0b27f6a5e4ba4d2adf0a3",
    "data_batch_2": "4f9b252f32580af1612e4b2400c14e08",
    "data_batch_3": "3d72a3e44a7254ae0a04e40edf008623",
    "data_batch_4": "c598c2cb895302571500c8570cac16fc",
    "data_batch_5": "a234f2b54383eb6d2de543d33f68d763",
    "test_batch": "98b2033b30eca9a236ddb3957c45d9bf",
}
DATASET_LABELS = {
    "mnist": "MNIST",
    "binarized_mnist": "MNIST (dynamically binarized)",
    "fashion_mnist": "Fashion-MNIST",
    "synthetic": "synthetic images",
}


def dataset_label(name: str, root: str | os.PathLike) -> str:
    """The data set's name as a result on it must be labelled. CIFAR-10 files are told apart by
    their checksums: the original, the JPEG re-encoding, or another copy."""
    if name != "cifar10":
        return DATASET_LABELS[name]
    folder = Path(root).expanduser() / CIFAR_FOLDER
    found = {file: hashlib.md5(_read_bytes(folder / file)).hexdigest()
             for file in CIFAR_TRAIN_FILES + CIFAR_TEST_FILES}
    if found == CIFAR_ORIGINAL_MD5:
        return "CIFAR-10"
    if found == CIFAR_JPEG_MD5:
        return "CIFAR-10 (JPEG re-encoding)"
    return "CIFAR-10 (a modified copy: not the original files)"
