"""Fixtures of the benchmark tests: a data cache holding the real Fashion-MNIST files.

Tests that need the data skip (with the command to install it) when the files are absent.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adahessian_bench import data

INSTALL_HINT = (
    "Fashion-MNIST is not installed: `apt-get install dataset-fashion-mnist` "
    "(or `adahessian-bench data fetch fashion-mnist`)"
)


def _find_fmnist() -> Path | None:
    """A folder holding the four Fashion-MNIST files: the Debian package's, or the user's cache."""
    candidates = [data.SYSTEM_FMNIST_DIR, data.cache_dir() / "fashion-mnist"]
    for d in candidates:
        if all((d / name).is_file() for name in data.FMNIST_FILES.values()):
            return d
    return None


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    d = _find_fmnist()
    if d is None:
        pytest.skip(INSTALL_HINT)
    return d


@pytest.fixture(scope="session")
def data_cache(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh cache folder ($ADAHESSIAN_DATA) holding links to the real Fashion-MNIST files."""
    cache = tmp_path_factory.mktemp("cache")
    (cache / "fashion-mnist").mkdir()
    for name in data.FMNIST_FILES.values():
        (cache / "fashion-mnist" / name).symlink_to(fmnist_dir / name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAHESSIAN_DATA", str(cache))
        yield cache


@pytest.fixture
def subprocess_env(data_cache: Path) -> dict[str, str]:
    """Environment for running the CLI in a subprocess: the test cache, no progress bars."""
    env = dict(os.environ)
    env["ADAHESSIAN_DATA"] = str(data_cache)
    env["TQDM_DISABLE"] = "1"
    return env


def _folder_state(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in folder.rglob("*") if f.is_file()}


@pytest.fixture
def folder_state() -> Callable[[Path], dict[str, bytes]]:
    """Every file under a folder with its content: equal before and after a refused command."""
    return _folder_state


@pytest.fixture
def tiny_profile(tmp_path: Path) -> Callable[..., Path]:
    """Write a tiny fmnist-resnet20 profile file (one SGD optimizer) and return its path."""

    def write(lr: float = 0.05, epochs: int = 1, name: str = "tiny.toml") -> Path:
        path = tmp_path / name
        path.write_text(
            'task = "fmnist-resnet20"\n'
            f"[train]\nepochs = {epochs}\nbatch_size = 16\nmilestones = [1]\ngamma = 0.5\n"
            "train_subset = 100\ntest_subset = 100\neval_batch_size = 50\n"
            f"[optimizers.sgd]\nlr = {lr}\n"
        )
        return path

    return write
