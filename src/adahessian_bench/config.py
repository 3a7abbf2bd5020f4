"""Profiles: small TOML files in ``configs/``, one per task and profile (``TASK-PROFILE.toml``);
and what identifies the runs of a resolved configuration in an output folder."""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

PROFILES = ("quick", "paper")


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
    if path is not None:
        text = Path(path).read_text()
    else:
        f = resources.files("adahessian_bench") / "configs" / f"{task}-{profile}.toml"
        if not f.is_file():
            known = ", ".join(profile_names(task)) or "none"
            raise ValueError(f"no profile {profile!r} for task {task!r} (known: {known})")
        text = f.read_text()
    cfg = tomllib.loads(text)
    if cfg.get("task", task) != task:
        raise ValueError(f"the config is for task {cfg['task']!r}, not {task!r}")
    for key in ("train", "optimizers"):
        if key not in cfg:
            raise ValueError(f"the config has no [{key}] table")
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
