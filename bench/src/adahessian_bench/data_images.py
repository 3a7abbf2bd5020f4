"""The image data sets: Fashion-MNIST and CIFAR-10, fetched into the cache folder, loaded into
memory, batched with augmentation.

Cache folder: ``data.cache_dir()`` (``$ADAHESSIAN_DATA``, default ``~/.cache/adahessian``), one
sub-folder per data set: ``fashion-mnist/`` and ``cifar10/``.

Fashion-MNIST is fetched, in order of preference, from
  1. the Debian package ``dataset-fashion-mnist`` if installed (files under SYSTEM_FMNIST_DIR),
  2. ``apt-get download dataset-fashion-mnist`` + ``dpkg -x`` (works without root and without
     internet access other than the Debian mirror),
  3. the canonical Zalando download URLs.
CIFAR-10 has no registry package: it is downloaded from its home page (python version tarball).

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
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from adahessian_bench.data import (
    DataCorrupt,
    DataUnavailable,
    _download,
    cache_dir,
    cache_folder,
)

SYSTEM_FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FMNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
# SHA-256 of each file's CONTENT (decompressed), checked whenever a file is read. The Debian
# package's .gz files are recompressed (other bytes than Zalando's downloads, whose MD5s are the
# published 8d4fb7e6..., 25c81989..., bef4ecab..., bb300cfd...), with the same content: its MD5s
# are the published ones of the uncompressed files (f4a8712d..., 9018921c..., 8181f547...,
# 15d48437...). So either source passes.
FMNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": (
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
    ),
    "train-labels-idx1-ubyte.gz": (
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
    ),
    "t10k-images-idx3-ubyte.gz": (
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
    ),
}
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_DIR = "cifar-10-batches-py"
# MD5 of each batch file, as published with the data set (and checked by torchvision), checked
# whenever a batch is read (about 0.35 s for the six; reading them costs about as much).
CIFAR10_BATCHES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
CLASSES = 10  # of Fashion-MNIST and CIFAR-10


# ----------------------------------------------------------------------------- fetching


def _fmnist_complete(d: Path) -> bool:
    return all((d / name).is_file() for name in FMNIST_FILES.values())


def _fmnist_problem(path: Path, name: str) -> str | None:
    """What is wrong with ``path`` as the Fashion-MNIST file ``name``, or None."""
    if not path.is_file():
        return f"{path}: missing"
    try:
        read_idx(path, FMNIST_SHA256[name])
    except (OSError, ValueError) as e:
        return str(e)
    return None


def fetch_fashion_mnist(verbose: bool = True, verify: bool = False) -> Path:
    """Install Fashion-MNIST into the cache folder; return that folder.

    ``verify``: check the files already there too (their checksums) and replace the damaged ones.
    """
    dest = cache_dir() / "fashion-mnist"
    say = print if verbose else (lambda *a, **k: None)
    todo = []
    for name in FMNIST_FILES.values():
        problem = _fmnist_problem(dest / name, name) if verify else None
        if problem or not (dest / name).is_file():
            todo.append(name)
            if problem and (dest / name).is_file():
                say(f"repairing {problem}")
    if not todo:
        return dest
    cache_folder(dest, "fashion-mnist")
    errors = []

    def install(source: str, put: Callable[[str, Path], object]) -> bool:
        """Put the files of ``todo`` from one source, each checked before it replaces the old."""
        for name in list(todo):
            part = dest / (name + ".part")
            try:
                put(name, part)
                problem = _fmnist_problem(part, name)
                if problem:
                    raise ValueError(f"{source}: {problem}")
                os.replace(part, dest / name)
                todo.remove(name)
            except (OSError, ValueError, subprocess.CalledProcessError) as e:
                part.unlink(missing_ok=True)
                errors.append(f"{source}: {e}")
                return False
        return True

    # 1. The installed Debian package: no download.
    if _fmnist_complete(SYSTEM_FMNIST_DIR):
        say(f"copying Fashion-MNIST from {SYSTEM_FMNIST_DIR}")
        if install(str(SYSTEM_FMNIST_DIR), lambda n, p: shutil.copyfile(SYSTEM_FMNIST_DIR / n, p)):
            return dest
    else:
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
                if install("apt-get download", lambda n, p: shutil.copyfile(src / n, p)):
                    return dest
            except (subprocess.CalledProcessError, ValueError, OSError) as e:
                errors.append(f"apt-get download + dpkg -x failed: {e}")
    else:
        errors.append("apt-get/dpkg not found")

    # 3. The canonical download URLs.
    say(f"downloading {', '.join(todo)} from {FMNIST_URL}")
    if install(FMNIST_URL, lambda n, p: _download(FMNIST_URL + n, p)):
        return dest

    raise DataUnavailable(
        "Fashion-MNIST is not available. Install it with\n"
        "    sudo apt-get install dataset-fashion-mnist\n"
        "(Debian/Ubuntu), or put the four files "
        + ", ".join(FMNIST_FILES.values())
        + f" into {dest}.\nWhat was tried:\n  - "
        + "\n  - ".join(errors)
    )


def _cifar10_problems(batches: Path) -> list[str]:
    """What is wrong with the CIFAR-10 batch files under ``batches`` (nothing: [])."""
    problems = []
    for name in CIFAR10_BATCHES:
        try:
            read_cifar10_batch(batches / name)
        except (OSError, ValueError) as e:
            problems.append(str(e))
    return problems


def fetch_cifar10(verbose: bool = True, verify: bool = False) -> Path:
    """Download CIFAR-10 (python version) into the cache folder; return that folder.

    ``verify``: check the batch files already there too (their checksums); if one is damaged,
    unpack them again from the tarball."""
    dest = cache_dir() / "cifar10"
    batches = dest / CIFAR10_DIR
    say = print if verbose else (lambda *a, **k: None)
    if (batches / "test_batch").is_file():
        problems = _cifar10_problems(batches) if verify else []
        if not problems:
            return dest
        for problem in problems:
            say(f"repairing {problem}")
    cache_folder(dest, "cifar10")
    tarball = dest / CIFAR10_TARBALL
    if not tarball.is_file():
        try:
            say(f"downloading {CIFAR10_URL}")
            _download(CIFAR10_URL, tarball)
        except OSError as e:
            raise DataUnavailable(
                f"CIFAR-10 could not be downloaded from {CIFAR10_URL} ({e}).\n"
                "No package registry ships CIFAR-10: download cifar-10-python.tar.gz on a machine"
                f" with internet access and put it into {dest}, then run this again."
            ) from e
    md5 = hashlib.md5(tarball.read_bytes()).hexdigest()
    if md5 != CIFAR10_MD5:
        raise DataUnavailable(
            f"{tarball} has md5 {md5}, expected {CIFAR10_MD5}: delete it and run "
            "`adahessian-bench data fetch cifar10` again"
        )
    with tarfile.open(tarball) as tf:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: refuse unsafe members
            tf.extractall(dest, filter="data")
        else:
            tf.extractall(dest)  # a fixed tarball whose checksum was checked above
    problems = _cifar10_problems(batches)
    if problems:
        raise DataUnavailable(f"{tarball} unpacked, but {problems[0]}")
    return dest


# ----------------------------------------------------------------------------- loading


def read_idx(path: Path, sha256: str | None = None) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) of unsigned bytes; ``sha256``: the digest its
    content must have. ValueError naming the file if it is damaged."""
    packed = path.read_bytes()
    try:
        raw = gzip.decompress(packed)
    except (EOFError, OSError, zlib.error) as e:  # truncated, or not gzip (gzip.BadGzipFile)
        raise ValueError(f"{path}: not a whole gzip file ({e})") from None
    if sha256 is not None and hashlib.sha256(raw).hexdigest() != sha256:
        raise ValueError(f"{path}: the content does not match its SHA-256 checksum")
    magic = int.from_bytes(raw[:4], "big")
    if magic >> 8 != 0x08:  # 0x08 = unsigned byte data
        raise ValueError(f"{path}: not an unsigned-byte IDX file (magic {magic:#x})")
    ndim = magic & 0xFF
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, np.uint8, offset=min(len(raw), 4 + 4 * ndim))
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, found {data.size} values")
    return data.reshape(shape)


def check_labels(
    images: np.ndarray, labels: np.ndarray, image_file: Path, label_file: Path
) -> None:
    """ValueError naming the files if the counts differ or a label is not a class."""
    if len(images) != len(labels):
        raise ValueError(
            f"{image_file} holds {len(images)} images, {label_file} {len(labels)} labels"
        )
    if labels.size and not 0 <= labels.min() <= labels.max() < CLASSES:
        raise ValueError(f"{label_file}: labels outside 0..{CLASSES - 1}")


@dataclass
class Arrays:
    """Raw uint8 images (N, H, W) or (N, H, W, C) and int64 labels, train and test."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_fashion_mnist(directory: Path | None = None) -> Arrays:
    """The four files, each checked against its checksum (DataCorrupt naming a damaged one)."""
    d = directory or fetch_fashion_mnist()
    f = {k: d / name for k, name in FMNIST_FILES.items()}
    try:
        a = {k: read_idx(path, FMNIST_SHA256[path.name]) for k, path in f.items()}
        for split in ("train", "test"):
            images, labels = f"{split}_images", f"{split}_labels"
            check_labels(a[images], a[labels], f[images], f[labels])
    except ValueError as e:
        raise DataCorrupt(str(e), "fashion-mnist") from None
    return Arrays(
        a["train_images"],
        a["train_labels"].astype(np.int64),
        a["test_images"],
        a["test_labels"].astype(np.int64),
    )


def read_cifar10_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) and labels of one CIFAR-10 batch file, checked against its MD5
    before it is unpickled. ValueError naming the file if it is damaged."""
    raw = path.read_bytes()
    if hashlib.md5(raw).hexdigest() != CIFAR10_BATCHES[path.name]:
        raise ValueError(f"{path}: does not match its MD5 checksum")
    try:
        b = pickle.loads(raw, encoding="bytes")
        x = np.asarray(b[b"data"], np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        y = np.asarray(b[b"labels"], np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a CIFAR-10 batch ({e})") from None
    check_labels(x, y, path, path)
    return x, y


def load_cifar10(directory: Path | None = None) -> Arrays:
    d = (directory or fetch_cifar10()) / CIFAR10_DIR
    try:
        train = [read_cifar10_batch(d / f"data_batch_{i}") for i in range(1, 6)]
        x_test, y_test = read_cifar10_batch(d / "test_batch")
    except ValueError as e:
        raise DataCorrupt(str(e), "cifar10") from None
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
