"""Profiles: small TOML files in ``configs/``, one per task and profile (``TASK-PROFILE.toml``);
and what identifies the runs of a resolved configuration in an output folder.

A profile holds ``task`` and the tables ``[train]``, ``[optimizers.NAME]`` (required), ``[model]``
and ``[data]``. ``load`` checks it whole before anything runs: every key must be known (the
``[train]`` keys of ``TRAIN_KEYS``, and the task's own ``Task.train_keys``, ``Task.model_keys`` and
``Task.data_keys``), and the ``[train]`` values must be of the kind each key takes. The model and
the optimizers are checked by building them (``train.check``).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from .data import atomic_write_text
from .hints import did_you_mean

PROFILES = ("quick", "paper")
SCHEDULES = ("multistep", "inverse_sqrt", "cosine", "constant")  # see train.make_scheduler
# Schedules whose lr at a step does not depend on the run's length: a run of a larger [train]
# budget passes through every shorter one (same steps, same data, same evaluations), so each of
# its evaluations is the final metric of a shorter budget.
HORIZONLESS = ("inverse_sqrt", "constant")
DEFAULT_SCHEDULE = "multistep"  # a [train] table without a schedule
TABLES = ("train", "model", "data", "optimizers")


def schedule_of(train: dict[str, Any]) -> str:
    """The lr schedule of a [train] table (the default where it names none)."""
    return train.get("schedule", DEFAULT_SCHEDULE)  # as given: a bad value is named as it is


def _integer(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low,
            f"an integer >= {low}" + (" (0 = all)" if low == 0 else ""))  # fmt: skip


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


# The [train] keys every task knows, each with the test its value must pass and that test in words.
# (``schedule``'s names are checked by ``train.resolve``; subsets larger than the data mean all.)
TRAIN_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": _integer(1),
    "batch_size": _integer(1),
    "eval_batch_size": _integer(1),
    "max_steps": _integer(1),
    "train_subset": _integer(0),
    "test_subset": _integer(0),
    "milestones": (
        lambda v: isinstance(v, list) and all(_integer(1)[0](m) for m in v),
        "a list of integers >= 1",
    ),
    "gamma": (lambda v: _number(v) and v > 0, "a number > 0"),
    "schedule": (lambda v: isinstance(v, str), "a schedule's name"),
    "warmup_steps": _integer(0),
    "target": (_number, "a number"),
    "target_accuracy": (_number, "a number"),
    # The steps of a run as a multiple of epochs x steps per epoch (1.5: half as many again, the
    # last epoch cut short), the lr schedule stretched to them: the step-speedup runs.
    "budget": (lambda v: _number(v) and v > 0, "a number > 0"),
    # Evaluate every this many optimizer steps within an epoch too (0 = at the epoch's end only):
    # the report reads the time and steps to the target at that resolution.
    "eval_every": _integer(0),
    # Rounds of the side-by-side timing of the optimizers' steps before training (stepcost.py);
    # 0 = none (the report's time axis is then the wall clock).
    "cost_rounds": _integer(0),
    # Task.train_keys: only the tasks that name them take these.
    "valid_subset": _integer(0),
    "bptt": _integer(1),
}
TASK_TRAIN_KEYS = ("valid_subset", "bptt")  # the keys above that a task must name to take


def unknown_keys(table: str, given: Iterable[str], known: Iterable[str]) -> None:
    """ValueError naming the first of ``given`` not in ``known``, with a close match."""
    known = list(known)
    for key in given:
        if key not in known:
            raise ValueError(
                f"{table} {key}: unknown key{did_you_mean(key, known)}; known: {', '.join(known)}"
            )


def check(cfg: dict[str, Any], task: str) -> None:
    """Every key of a profile known, the required ones there, the [train] values of their kind."""
    from .tasks import TASKS  # here: tasks import torch

    t = TASKS[task]
    unknown_keys("top level:", cfg, ("task", *TABLES))
    for key in ("train", "optimizers"):
        if key not in cfg:
            raise ValueError(f"the config has no [{key}] table")
    for key in TABLES:
        if not isinstance(cfg.get(key, {}), dict):
            raise ValueError(f"{key} must be a table ([{key}])")
    train = cfg["train"]
    train_keys = [k for k in TRAIN_KEYS if k not in TASK_TRAIN_KEYS or k in t.train_keys]
    unknown_keys("[train]", train, train_keys)
    unknown_keys("[model]", cfg.get("model", {}), t.model_keys)
    unknown_keys("[data]", cfg.get("data", {}), t.data_keys)
    from .optimizers import kind as optimizer_kind

    for name in cfg["optimizers"]:
        try:
            optimizer_kind(name)
        except ValueError as e:
            raise ValueError(f"[optimizers.{name}]: {e}") from None
        if not isinstance(cfg["optimizers"][name], dict):
            raise ValueError(f"optimizers.{name} must be a table ([optimizers.{name}])")
    required = ["epochs", "batch_size", *(k for k in ("bptt",) if k in t.train_keys)]
    if schedule_of(train) == "multistep":
        required += ["milestones", "gamma"]
    for key in required:
        if key not in train:
            raise ValueError(f"[train] has no {key} (required)")
    for key, value in train.items():
        ok, kind = TRAIN_KEYS[key]
        if not ok(value):
            raise ValueError(f"[train] {key}: must be {kind}, got {value!r}")


def profile_names(task: str) -> list[str]:
    """Profiles shipped for a task. A profile name holds no "-", so that the profiles of a task
    named like another plus a suffix (``brown-lm-lstm-quick``) are not taken for the shorter's."""
    files = resources.files("adahessian_bench") / "configs"
    names = sorted(f.name for f in files.iterdir() if f.name.endswith(".toml"))
    prefix = task + "-"
    found = [n[len(prefix) : -len(".toml")] for n in names if n.startswith(prefix)]
    return [n for n in found if "-" not in n]


def load(task: str, profile: str, path: str | Path | None = None) -> dict[str, Any]:
    """The profile ``TASK-PROFILE.toml`` shipped with the package, or the TOML file ``path``."""
    source = str(path) if path is not None else f"{task}-{profile}.toml"
    if path is None:
        f = resources.files("adahessian_bench") / "configs" / source
        if not f.is_file():
            known = ", ".join(profile_names(task)) or "none"
            raise ValueError(f"no profile {profile!r} for task {task!r} (known: {known})")
    try:
        text = Path(path).read_text() if path is not None else f.read_text()
        cfg = tomllib.loads(text)
        if cfg.get("task", task) != task:
            raise ValueError(f"the config is for task {cfg['task']!r}, not {task!r}")
        check(cfg, task)
    except ValueError as e:  # tomllib.TOMLDecodeError too: "... (at line 3, column 7)"
        raise ValueError(f"{source}: {e}") from None
    return cfg


def run_config(cfg: dict[str, Any], opt_name: str, seed: int) -> dict[str, Any]:
    """The configuration of one run (``OPT-seedS``) of the resolved configuration ``cfg``: what
    its checkpoint must have been written with to be resumed, and what its metrics belong to."""
    return {"task": cfg["task"], "train": cfg["train"], "model": cfg.get("model", {}),
            "data": cfg.get("data", {}), "optimizer": opt_name, "seed": seed,
            "hyperparameters": cfg["optimizers"][opt_name]}  # fmt: skip


def config_hash(run_cfg: dict[str, Any]) -> str:
    """A short hash of a run's configuration: every metrics line carries it (``config_hash``),
    so that a report never mixes runs of different configurations."""
    return hashlib.sha256(json.dumps(run_cfg, sort_keys=True).encode()).hexdigest()[:16]


def run_dirs(out: Path) -> list[str]:
    """The run folders under ``out`` (``OPT-seedS``): those holding a metrics.jsonl or a
    checkpoint.pt."""
    if not out.is_dir():
        return []
    return sorted(
        d.name
        for d in out.iterdir()
        if d.is_dir() and ((d / "metrics.jsonl").exists() or (d / "checkpoint.pt").exists())
    )


# ----------------------------------------------------------------------------- config.json


def _valid_format(fmt: Any) -> bool:
    try:
        format(0.5, fmt)
    except (TypeError, ValueError):
        return False
    return True


METRIC_KEYS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "key": (lambda v: isinstance(v, str) and bool(v), "a metric's name"),
    "label": (lambda v: isinstance(v, str), "a string"),
    "higher_is_better": (lambda v: isinstance(v, bool), "true or false"),
    "scale": (lambda v: _number(v) and v > 0, "a number > 0"),
    "fmt": (lambda v: isinstance(v, str) and _valid_format(v), "a number format such as .2f"),
    "extra": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
              "a list of metric names"),
}  # fmt: skip
OPTIONAL_TRAIN = ("max_steps", "train_subset", "test_subset", "target", "target_accuracy")


def check_resolved(cfg: Any) -> None:
    """ValueError saying what is wrong if ``cfg`` is not a resolved configuration as ``run``
    writes it into config.json (what the report reads back: task, profile, seeds, optimizers,
    the [train] values, the metric)."""
    if not isinstance(cfg, dict):
        raise ValueError(f"it holds {type(cfg).__name__}, not a JSON object")
    for key in ("task", "train"):
        if key not in cfg:
            raise ValueError(f"it has no {key}")
    if not isinstance(cfg["task"], str) or not cfg["task"]:
        raise ValueError(f"task is {cfg['task']!r}, not a task's name")
    if not isinstance(cfg.get("profile", ""), str):
        raise ValueError(f"profile is {cfg['profile']!r}, not a name")
    seeds = cfg.get("seeds", [])  # (seeds and optimizers: absent in folders of old versions)
    if not (isinstance(seeds, list) and all(_integer(0)[0](s) for s in seeds)):
        raise ValueError(f"seeds is {seeds!r}, not a list of integers >= 0")
    opts = cfg.get("optimizers", {})
    if not (isinstance(opts, dict) and all(isinstance(h, dict) for h in opts.values())):
        raise ValueError("optimizers is not a table of optimizers and their hyperparameters")
    train = cfg["train"]
    if not isinstance(train, dict):
        raise ValueError(f"train is {train!r}, not a table")
    for key in ("epochs", "batch_size"):
        if key not in train:
            raise ValueError(f"train has no {key}")
    schedule = schedule_of(train)
    if schedule not in SCHEDULES:
        raise ValueError(f"train.schedule is {schedule!r}, not one of {', '.join(SCHEDULES)}")
    for key in ("milestones", "gamma") if schedule == "multistep" else ():
        if key not in train:
            raise ValueError(f"train has no {key} (its multistep schedule needs it)")
    for key, value in train.items():
        if key in TRAIN_KEYS and not (value is None and key in OPTIONAL_TRAIN):
            test, words = TRAIN_KEYS[key]
            if not test(value):
                raise ValueError(f"train.{key} is {value!r}, not {words}")
    metric = cfg.get("metric")
    if metric is not None:
        if not isinstance(metric, dict):
            raise ValueError(f"metric is {metric!r}, not a table")
        for key, (test, words) in METRIC_KEYS.items():
            if key not in metric and key != "extra":
                raise ValueError(f"metric has no {key}")
            if key in metric and not test(metric[key]):
                raise ValueError(f"metric.{key} is {metric[key]!r}, not {words}")
    for key in ("model", "data"):
        if not isinstance(cfg.get(key, {}), dict):
            raise ValueError(f"{key} is {cfg[key]!r}, not a table")


# ----------------------------------------------------------------------------- folder ownership

MARK_FILE = ".adahessian-bench"  # in every folder the harness writes: {"written_by", "kind"}
_IGNORED = {".lock", MARK_FILE}  # a folder holding only these is as good as empty


def _describes(path: Path, keys: tuple[str, ...]) -> bool:
    """Whether ``path`` is a JSON object with ``keys`` (a config.json or sweep.json of ours)."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and all(k in content for k in keys)


def written_by_us(out: Path) -> bool:
    """Whether the folder ``out`` was written by adahessian-bench: it holds the mark, or (a folder
    of an older version) a config.json or sweep.json of ours."""
    return (
        (out / MARK_FILE).is_file()
        or _describes(out / "config.json", ("task", "optimizers", "seeds"))
        or _describes(out / "sweep.json", ("task", "param", "points"))
    )


def check_ours(out: Path) -> None:
    """ValueError unless ``out`` is absent, empty, or a folder that adahessian-bench wrote: a
    run never writes among files it did not make (a home folder, the filesystem's root, a
    folder of a user's own ``env.json``)."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder: use another --out")
    try:
        entries = sorted(p.name for p in out.iterdir() if p.name not in _IGNORED)
    except OSError as e:
        raise ValueError(f"--out {out} cannot be read ({e.strerror}): use another --out") from None
    if entries and not written_by_us(out):
        more = f" and {len(entries) - 4} more" if len(entries) > 4 else ""
        shown = ", ".join(entries[:4]) + more
        raise ValueError(
            f"--out {out} holds files that adahessian-bench did not write ({shown}): use a new or "
            "empty folder for --out"
        )


def mark(out: Path, kind: str) -> None:
    """Mark ``out`` as a folder of adahessian-bench (``kind``: run or sweep)."""
    if not (out / MARK_FILE).is_file():
        text = json.dumps({"written_by": "adahessian-bench", "kind": kind}) + "\n"
        atomic_write_text(out / MARK_FILE, text)
