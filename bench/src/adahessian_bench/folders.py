"""The output folder of a run: its layout, its lock, the checks before anything is written into it,
and the text of its metrics files.

Output folder layout::

    OUT/config.json               the fully resolved configuration
    OUT/env.json                  torch version, device, CPU, threads, platform, command
    OUT/step_cost.json            each optimizer's step cost, timed side by side (stepcost.py)
    OUT/.lock                     locked (flock) while a run writes the folder
    OUT/.adahessian-bench         the mark of a folder this harness wrote (config.MARK_FILE)
    OUT/OPT-seedS/metrics.jsonl   one JSON object per epoch, and per evaluation within an epoch
                                  (``[train] eval_every``; see train.METRIC_FIELDS)
    OUT/OPT-seedS/checkpoint.pt   the state after the last finished epoch (for --resume; see
                                  checkpoints.py)

A folder holds the runs of one configuration: a run into a folder of another configuration, into
a folder another run is writing, or into a non-empty folder this harness did not write, is refused
before anything is written. Each metrics line carries the hash of its run's configuration
(``config_hash``: see config.run_config), which the report checks against config.json.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from . import config, data, steptime
from .config import run_dirs

LOCK_FILE = ".lock"
START_OVER = (
    "use another --out, or delete the folder to start over (--resume continues only the same "
    "configuration)"
)


class FolderInUse(ValueError):
    """Another process is writing the output folder."""


@contextlib.contextmanager
def hold(out: Path) -> Iterator[None]:
    """Lock ``out`` (flock on ``out/.lock``, created with the folder if need be) while the block
    runs; raise FolderInUse at once if another process holds it. The operating system releases
    the lock when the process ends, however it ends: a killed run leaves no stale lock. A folder
    this call created is removed again if the block fails before writing anything into it."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = open(out / LOCK_FILE, "a")  # noqa: SIM115 (closed by the with below)
    except OSError as e:
        raise ValueError(
            f"--out {out} cannot be {'created' if created else 'written'}: "
            f"{data.os_error_text(e)}; use another --out"
        ) from None
    with lock as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FolderInUse(
                f"{out} is in use by another run or sweep: wait until it ends, or use another --out"
            ) from None
        try:
            yield
        except BaseException:
            if created and [p.name for p in out.iterdir()] == [LOCK_FILE]:
                (out / LOCK_FILE).unlink()
                out.rmdir()
            raise


def check_out(cfg: dict[str, Any], out: Path) -> None:
    """Raise ValueError unless ``out`` is new or holds runs of ``cfg`` alone (a run into it may
    start over without --resume, or continue with it)."""
    config.check_ours(out)
    if not out.exists():
        return
    if (out / "sweep.json").is_file():  # sweep.SWEEP_FILE
        raise ValueError(f"{out} is a sweep's folder: use another --out")
    config_path = out / "config.json"
    if config_path.is_file():
        try:
            previous = json.loads(config_path.read_text())
        except ValueError:
            raise ValueError(f"{config_path} is damaged (not JSON): {START_OVER}") from None
        if previous != json.loads(json.dumps(cfg)):
            raise ValueError(
                f"{out} holds runs of another configuration (its config.json differs from this "
                f"command's): {START_OVER}"
            )
    ours = {f"{o}-seed{s}" for s in cfg["seeds"] for o in cfg["optimizers"]}
    others = [d for d in run_dirs(out) if d not in ours or not config_path.is_file()]
    if others:
        raise ValueError(
            f"{out} holds runs of another configuration ({', '.join(others)}): {START_OVER}"
        )


def say_what_starts_over(cfg: dict[str, Any], out: Path) -> None:
    """A run without --resume into a folder of results: name, on stderr, what it replaces."""
    runs = []
    for name in run_dirs(out):
        try:
            lines = (out / name / "metrics.jsonl").read_text().splitlines()
        except OSError:
            lines = []
        epochs = sum('"kind": "eval"' not in line for line in lines)
        runs.append(f"{name} ({epochs} of {cfg['train']['epochs']} epochs)")
    if runs:
        cost = f"{steptime.COST_FILE} and " if (out / steptime.COST_FILE).is_file() else ""
        print(
            f"starting over in {out}: {cost}the results of {', '.join(runs)} are replaced, each "
            "when its run starts (interrupt now to keep them; --resume continues them instead)",
            file=sys.stderr,
        )


def metrics_text(metrics: list[dict[str, Any]]) -> str:
    """The text of a metrics.jsonl: a strict-JSON line per epoch (non-finite floats as null)."""

    def finite(v: Any) -> Any:
        return None if isinstance(v, float) and not math.isfinite(v) else v

    return "".join(json.dumps({k: finite(v) for k, v in m.items()}) + "\n" for m in metrics)
