"""Fixtures of the benchmark tests: a data cache holding the real Fashion-MNIST files.

The tests that need the data fetch it once per session into the default data cache, as
`adahessian-bench data fetch fashion-mnist` does: from the installed Debian package, else with
`apt-get download` + `dpkg -x` (no root needed), else from Zalando's URLs. When that fails they
FAIL with the reason; they never skip.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from adahessian_bench import data, data_images

CACHE = data.cache_dir()  # before any fixture points $ADAHESSIAN_DATA at a temporary folder


def _fetch_fmnist(cache: Path) -> Path:
    """The Fashion-MNIST folder of the data cache ``cache``, fetched and checked as `data fetch
    fashion-mnist` does; the calling test fails (never skips) with the reason if it cannot be."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAHESSIAN_DATA", str(cache))
        try:
            return data_images.fetch_fashion_mnist(verbose=False, verify=True)
        except data.DataUnavailable as e:
            pytest.fail(f"Fashion-MNIST could not be fetched into {cache}:\n{e}", pytrace=False)


@pytest.fixture(scope="session")
def fetch_fmnist() -> Callable[[Path], Path]:
    """The function the ``fmnist_dir`` fixture fetches with (for the tests of that fixture)."""
    return _fetch_fmnist


@pytest.fixture(scope="session")
def fmnist_dir() -> Path:
    """The four real Fashion-MNIST files, in the default data cache."""
    return _fetch_fmnist(CACHE)


@pytest.fixture(scope="session")
def data_cache(fmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh cache folder ($ADAHESSIAN_DATA) holding links to the real Fashion-MNIST files."""
    cache = tmp_path_factory.mktemp("cache")
    (cache / "fashion-mnist").mkdir()
    for name in data_images.FMNIST_FILES.values():
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
