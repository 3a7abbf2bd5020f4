"""The data sets that ``adahessian-bench data fetch NAME`` knows, by name, and their fetchers.

Each fetcher puts its data set into the cache folder (``data.cache_dir()``) unless it is there, and
returns its folder. They live in the modules of their data (``data_images``, ``data_corpora``,
``data_widedeep``); this registry sits above those modules, which import nothing from it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import data_corpora, data_images, data_widedeep

# name -> fetcher(verbose=..., verify=...); the names a Task's ``dataset`` may take.
FETCHERS: dict[str, Callable[..., Path]] = {
    "fashion-mnist": data_images.fetch_fashion_mnist,
    "cifar10": data_images.fetch_cifar10,
    "brown": data_corpora.fetch_brown,
    "bible-es-en": data_corpora.fetch_bible,
    "widedeep": data_widedeep.fetch_widedeep,
}
DATASETS = tuple(FETCHERS)


def fetch(name: str, verbose: bool = True, verify: bool = False) -> Path:
    """Fetch the data set ``name`` into the cache unless it is there; return its folder.

    ``verify``: check the files already there too and replace the damaged ones."""
    if name not in FETCHERS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return FETCHERS[name](verbose=verbose, verify=verify)
