"""Reading what runs wrote: a run folder's config.json, env.json, step costs and metrics, as the
harness writes them or as ``report --publish`` copies them (``Folder``).

The metric is the task's (``config.json``'s ``metric``: test accuracy, perplexity, BLEU ...);
runs written before tasks named their metric are read as test accuracy.

Only the runs of ``config.json``'s configuration are reported (a run folder of another optimizer
or seed, or whose metrics carry another ``config_hash``, is left out and named); unfinished runs
are reported as they are and named too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pandas as pd

from . import steptime
from .config import check_resolved, config_hash, run_config, run_dirs

# The metric of runs whose config.json names none (written before tasks named their metric).
ACCURACY: dict[str, Any] = {"key": "test_acc", "label": "test accuracy (%)",
                            "higher_is_better": True, "scale": 100.0, "fmt": ".2f",
                            "extra": []}  # fmt: skip


PUBLISHED = "metrics"  # report --publish copies the metrics and configuration to DEST/metrics


@dataclass(frozen=True)
class Folder:
    """Where the results of one run folder lie.

    As the harness writes them: ``path/config.json`` (and ``env.json``, ``step_cost.json``) and
    ``path/OPT-seedS/metrics.jsonl`` (``prefix`` None). As ``report --publish`` copies them
    (``docs/results/NAME``): ``path/metrics/config.json`` and ``path/metrics/OPT-seedS.jsonl``
    (``prefix`` ""); a point of a published sweep: ``path/metrics/POINT_OPT-seedS.jsonl``
    (``prefix`` "POINT_"), whose configuration is the sweep's first point's with the point's
    ``budget`` (the only swept setting read this way)."""

    path: Path
    files: Path  # config.json, env.json, step_cost.json
    prefix: str | None = None
    budget: float | None = None

    def __str__(self) -> str:
        point = self.prefix.rstrip("_") if self.prefix else ""
        return f"{self.path} (point {point})" if point else str(self.path)

    def metrics(self, run: str) -> Path:
        """The metrics file of the run ``OPT-seedS``."""
        if self.prefix is None:
            return self.path / run / "metrics.jsonl"
        return self.files / f"{self.prefix}{run}.jsonl"

    def runs(self) -> list[str]:
        """The runs that have results here (``OPT-seedS``; a checkpoint counts in the harness's
        own folders)."""
        if self.prefix is None:
            return run_dirs(self.path)
        if not self.files.is_dir():
            return []
        stems = [f.name.removesuffix(".jsonl") for f in self.files.glob("*.jsonl")]
        if self.prefix:
            return sorted(s.removeprefix(self.prefix) for s in stems if s.startswith(self.prefix))
        return sorted(s for s in stems if "_" not in s)  # a sweep's metrics are POINT_RUN


def folder(out: Path | Folder) -> Folder:
    """``out`` as a :class:`Folder`: a published copy if it has ``metrics/config.json`` and no
    ``config.json`` of its own, else a folder the harness writes."""
    if isinstance(out, Folder):
        return out
    out = Path(out)
    if not (out / "config.json").exists() and (out / PUBLISHED / "config.json").is_file():
        return Folder(out, out / PUBLISHED, "")
    return Folder(out, out)


def read_json(path: Path) -> Any:
    """A JSON file of a run or sweep folder; FileNotFoundError or ValueError naming the file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: not a run or sweep folder") from None
    except ValueError:
        raise ValueError(f"{path} is damaged (not JSON): make it again (rerun)") from None


def read_config(out: Path | Folder) -> dict[str, Any]:
    """The config.json of a run folder, checked (``config.check_resolved``); FileNotFoundError or
    ValueError naming the file and what is wrong with it."""
    f = folder(out)
    path = f.files / "config.json"
    cfg = read_json(path)
    if f.budget is not None and isinstance(cfg, dict) and isinstance(cfg.get("train"), dict):
        cfg["train"]["budget"] = f.budget
    try:
        check_resolved(cfg)
    except ValueError as e:
        raise ValueError(f"{path} is damaged ({e}): make it again (rerun)") from None
    cfg = {"seeds": [], "optimizers": {}, **cfg}  # absent in folders of old versions
    if "metric" in cfg:
        cfg["metric"] = {"extra": [], **cfg["metric"]}
    return cfg


def read_json_or_none(path: Path) -> dict[str, Any]:
    """A JSON object file, or {} if it is missing, damaged or not an object."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def read_env(out: Path | Folder) -> dict[str, Any]:
    """The env.json of a run folder; empty if missing or damaged (it only describes the machine)."""
    return read_json_or_none(folder(out).files / "env.json")


PROGRESS = "no run has finished, so the figures are of the epochs so far"


def read_runs(out: Path | Folder, cfg: dict[str, Any]) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The metrics lines of the finished runs under ``out`` of the configuration ``cfg``
    (config.json's), in one frame (null, a non-finite value, read as NaN); the runs that are
    incomplete; and those left out, each with the reason. An incomplete run (interrupted, or still
    running) is named but not read, so that its last epoch so far never counts as a final one;
    only when no run has finished are the incomplete runs' epochs read, as a progress report (its
    note says so). FileNotFoundError if no run has a finished epoch."""
    ours = [f"{o}-seed{s}" for s in cfg.get("seeds", []) for o in cfg.get("optimizers", {})]
    epochs = cfg["train"]["epochs"]

    def of_cfg(m: dict[str, Any]) -> bool:
        """Whether a metrics line is of a run of ``cfg`` (lines of older files carry no hash)."""
        if "config_hash" not in m:
            return True
        if m["optimizer"] not in cfg.get("optimizers", {}):
            return False
        return bool(m["config_hash"] == config_hash(run_config(cfg, m["optimizer"], m["seed"])))

    rows: list[dict[str, Any]] = []
    partial: list[dict[str, Any]] = []  # the epochs of the incomplete runs
    incomplete, left_out = [], []
    key = cfg.get("metric", ACCURACY)["key"]
    f = folder(out)
    for name in sorted(set(f.runs()) | set(ours)):
        path = f.metrics(name)
        try:
            text = path.read_text() if path.is_file() else ""
            lines = _metrics_lines(text, key, name)
        except ValueError as e:
            left_out.append(f"{name} (its {path.name} is damaged: {e})")
            continue
        if (ours and name not in ours) or not all(of_cfg(m) for m in lines):
            left_out.append(f"{name} (another configuration than config.json's)")
        elif not lines:
            started = path.exists() or (f.prefix is None and path.parent.is_dir())
            incomplete.append(f"{name} ({'no finished epoch' if started else 'not started'})")
        else:
            last = lines[-1]
            read = [{k: math.nan if v is None else v for k, v in m.items()} for m in lines]
            planned = last.get("epochs", epochs)  # the run's own count (a budget changes it)
            unfinished = last.get("kind") == "eval" or last["epoch"] < planned
            if unfinished and not last.get("diverged"):
                incomplete.append(f"{name} ({last['epoch']} of {planned} epochs)")
                partial += read
            else:
                rows += read
    if not rows and partial:
        incomplete.append(PROGRESS)
        rows = partial
    if not rows:
        raise FileNotFoundError(
            f"no */metrics.jsonl with a finished epoch under {out}: "
            "run `adahessian-bench run` first"
        )
    return pd.DataFrame(rows), incomplete, left_out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# The fields of a metrics line that are not numbers (every other one is a number, or null).
_KINDS = {"optimizer": str, "config_hash": str, "kind": str, "diverged": bool}
_KIND_WORDS = {"optimizer": "a name", "config_hash": "a hash", "kind": "a word",
               "diverged": "true or false"}  # fmt: skip


def _metrics_lines(text: str, key: str, run: str | None = None) -> list[dict[str, Any]]:
    """The lines of a metrics.jsonl; ValueError naming the first damaged line: not JSON, a line
    without the optimizer, seed, epoch or the metric ``key``, a value that is not a number
    (the metrics may be null: a diverged run's), or an epoch that does not follow the one before
    (a duplicated epoch), or (``run`` given: the folder's name, ``OPT-seedS``) a line of another
    run."""
    lines: list[dict[str, Any]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            m = json.loads(raw)
        except ValueError:
            raise ValueError(f"line {number} is not JSON") from None
        if not isinstance(m, dict):
            raise ValueError(f"line {number} is not a JSON object")
        missing = [k for k in ("optimizer", "seed", "epoch", key) if k not in m]
        if missing:
            raise ValueError(f"line {number} lacks {', '.join(missing)}")
        for k, v in m.items():  # the names and flags of a line, its numbers (null: not finite)
            kind = _KINDS.get(k)
            if not (isinstance(v, kind) if kind else v is None or _number(v)):
                raise ValueError(
                    f"line {number}: {k} is {v!r}, not {_KIND_WORDS.get(k, 'a number')}"
                )
        for k in ("seed", "epoch", "step"):
            v = m.get(k, 0)
            if not (_number(v) and 0 <= v < math.inf) or (k == "seed" and not isinstance(v, int)):
                raise ValueError(f"line {number}: {k} is {v!r}, not a count")
        if run is not None and f"{m['optimizer']}-seed{m['seed']}" != run:
            raise ValueError(
                f"line {number} is of optimizer {m['optimizer']!r} and seed {m['seed']!r}, not "
                f"of its folder's run {run}"
            )
        value = m[key]
        if (value is None or not math.isfinite(value)) and not m.get("diverged"):
            raise ValueError(
                f"line {number}: {key} is {value!r} in a run not marked diverged (the harness "
                "writes null only with diverged: true)"
            )
        if lines and m["epoch"] <= lines[-1]["epoch"]:
            raise ValueError(
                f"line {number} repeats epoch {m['epoch']} (a duplicated or out-of-order epoch)"
            )
        lines.append(m)
    return lines


def notes(incomplete: list[str], left_out: list[str]) -> list[str]:
    """The report's lines on the incomplete runs and the runs left out."""
    lines = []
    runs = [r for r in incomplete if r != PROGRESS]
    if runs:
        left = "" if PROGRESS in incomplete else "; left out of every figure until they finish"
        lines.append(
            f"- Incomplete (interrupted, or still running; `--resume` continues them{left}): "
            f"{', '.join(runs)}."
        )
    if PROGRESS in incomplete:
        lines.append(f"- Progress report: {PROGRESS}.")
    if left_out:
        lines.append(f"- Left out: {', '.join(left_out)}.")
    return lines


def read_cost(out: Path | Folder) -> tuple[dict[str, dict[str, float]], str | None]:
    """The step costs measured side by side before training (``step_cost.json``, per optimizer)
    and what is wrong with them: None, ``"missing"`` (runs of older versions, ``cost_rounds =
    0``) or why the file is damaged (not JSON, a cost that is not a finite number > 0); the costs
    are empty unless it is None."""
    path = folder(out).files / steptime.COST_FILE
    try:
        cost = json.loads(path.read_text())["optimizers"]
    except FileNotFoundError:
        return {}, "missing"
    except (OSError, ValueError, KeyError, TypeError):
        return {}, "damaged: not the JSON the harness writes"
    if not isinstance(cost, dict):
        return {}, "damaged: not the JSON the harness writes"
    for name, c in cost.items():
        for k in ("hessian_step_s", "plain_step_s"):
            value = c.get(k) if isinstance(c, dict) else None
            if not (_number(value) and 0 < float(cast(float, value)) < math.inf):
                return {}, f"damaged: {name}'s {k} is {value!r}, not a time > 0"
    return dict(cost), None


def time_basis(
    df: pd.DataFrame, out: Path | Folder
) -> tuple[dict[str, dict[str, float]], str | None]:
    """The step costs that put every optimizer of ``df`` on one time axis, or none (and why):
    an optimizer without a measured cost would otherwise be set against the others' costs with
    its own wall clock."""
    cost, problem = read_cost(out)
    lacking = sorted(set(df["optimizer"]) - set(cost))
    if problem is None and lacking:
        problem = f"it lacks {', '.join(lacking)}"
    return ({}, problem) if problem else (cost, None)


def with_time(df: pd.DataFrame, cfg: dict[str, Any], cost: dict[str, Any]) -> pd.DataFrame:
    """``df`` with ``time_s``: the training time of each epoch's end on the report's time axis,
    steps x the cost measured side by side (``steptime.cost_time``) for the optimizers that have
    one, else the wall clock (``train_time_s``)."""
    df = df.copy()

    def seconds(row: pd.Series) -> float:
        opt = row["optimizer"]
        if opt in cost and opt in cfg["optimizers"]:
            return steptime.cost_time(opt, int(row["step"]), cfg["optimizers"][opt], cost[opt])
        return float(row["train_time_s"])

    df["time_s"] = df.apply(seconds, axis=1) if len(df) else []
    df["measured"] = df["optimizer"].isin([o for o in cost if o in cfg["optimizers"]])
    return df


def reported_runs(df: pd.DataFrame) -> list[str]:
    """The run folders (``OPT-seedS``) whose metrics ``read_runs`` read into ``df``: the finished
    runs of config.json's configuration (the unfinished ones only in a progress report)."""
    return sorted({f"{o}-seed{int(s)}" for o, s in zip(df["optimizer"], df["seed"], strict=True)})
