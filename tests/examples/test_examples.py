"""Every script under examples/ runs in the test suite, so that none can rot: the digits
comparison here on a fraction of its data; the others where their subject is tested (named in
the last test)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def test_digits_compares_adam_and_adahessian_on_a_fraction_of_its_data() -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(EXAMPLES / "digits.py"),
            "--epochs",
            "3",
            "--seeds",
            "2",
            "--train-subset",
            "512",
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Digits: 512 train / 397 test images, 3 epochs, 2 seeds" in out.stdout
    rows = dict(re.findall(r"^\| (adam|adahessian)\s*\|\s+([\d.]+) ± [\d.]+", out.stdout, re.M))
    assert sorted(rows) == ["adahessian", "adam"], out.stdout
    assert all(20 < float(acc) <= 100 for acc in rows.values())  # chance is 10 %: it learned


def test_every_example_is_run_by_a_test() -> None:
    """A new example without a test fails here: each script's name must appear in a test."""
    tests = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("test_*.py"))
    untested = [
        str(p.relative_to(ROOT))
        for p in sorted(EXAMPLES.rglob("*.py"))
        if not re.search(rf"\b{re.escape(p.stem)}\b", tests)
    ]
    assert not untested, f"examples no test runs: {untested}"
