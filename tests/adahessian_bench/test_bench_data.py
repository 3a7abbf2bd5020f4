"""Data: what every data set shares (atomic writes), and the registry of the data sets' fetchers."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from adahessian_bench import data, fetchers
from adahessian_bench.tasks import TASKS


def test_the_registry_of_fetchers_sits_above_the_data_modules() -> None:
    """data.py imports none of the modules that import it (corpora, widedeep) nor the registry;
    the registry knows every task's data set, and refuses an unknown name."""
    tree = ast.parse(Path(data.__file__).read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {node.module or "", *(a.name for a in node.names)}
    assert not {m for m in imported for name in ("corpora", "widedeep", "fetchers") if name in m}
    assert {t.dataset for t in TASKS.values()} <= set(fetchers.DATASETS)
    with pytest.raises(ValueError, match="unknown data set 'mnist'; known: fashion-mnist"):
        fetchers.fetch("mnist")


def test_a_failed_atomic_write_leaves_the_old_file_and_no_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from adahessian_bench import data

    path = tmp_path / "x.json"
    path.write_text("old")

    def full_disk(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(data.os, "replace", full_disk)
    with pytest.raises(OSError, match="No space left"):
        data.atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]
