"""Checkpoints: ``OUT/OPT-seedS/checkpoint.pt``, the state of a run after its last finished epoch.

Checkpoints hold every state that the rest of the run depends on (model, optimizer, scheduler, all
RNG states, metrics so far: ``RunState``), so an interrupted run resumed with --resume ends with
the same metrics as an uninterrupted one (the timing and memory fields excepted). Checkpoints hold
tensors and plain containers only and are loaded with ``weights_only=True``: a planted checkpoint
cannot run code.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .data import atomic_write_text
from .folders import metrics_text

if TYPE_CHECKING:  # for the annotations alone: train imports this module
    from .train import Run


@dataclass
class RunState:
    """Where a run stands after its last finished epoch: what a checkpoint holds besides the
    model, optimizer, scheduler and RNG states."""

    metrics: list[dict[str, Any]] = field(default_factory=list)  # one record per epoch
    epoch: int = 0  # epochs finished
    step: int = 0  # optimizer steps taken
    train_time: float = 0.0  # seconds of training steps, summed over the epochs
    wall_time: float = 0.0  # seconds of training + evaluation
    finished: bool = False  # the last epoch is done, or the loss diverged


def restore(run: Run, run_dir: Path, resume: bool) -> RunState:
    """Where ``run`` starts: with ``resume``, from its checkpoint under ``run_dir`` if there is one
    (restored into its model, optimizer, scheduler and RNG states); else from scratch, in an empty
    ``run_dir``."""
    if resume and run.ctx.world_size > 1:
        raise ValueError("--resume is not supported for data-parallel (torchrun) runs")
    ckpt_path = run_dir / "checkpoint.pt"
    if resume and ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path, run.ctx.device, run.run_cfg)
        run.model.load_state_dict(ckpt["model"])
        run.optimizer.load_state_dict(ckpt["optimizer"])
        run.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_states(ckpt["rng"], run.ctx.generator, run.ctx.device)
        state = RunState(ckpt["metrics"], ckpt["epoch"], ckpt["step"], ckpt["train_time_s"],
                         ckpt["wall_time_s"], ckpt["finished"])  # fmt: skip
        # metrics.jsonl may hold an epoch finished after this checkpoint: rewrite it.
        atomic_write_text(run_dir / "metrics.jsonl", metrics_text(state.metrics))
        return state
    if run.writes:
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
    return RunState()


def save(run: Run, state: RunState, run_dir: Path) -> None:
    """The metrics so far, then the checkpoint: a crash in between is repaired on resume."""
    atomic_write_text(run_dir / "metrics.jsonl", metrics_text(state.metrics))
    ckpt = {
        "run_config": run.run_cfg,
        "epoch": state.epoch,
        "step": state.step,
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "rng": rng_states(run.ctx.generator, run.ctx.device),
        "metrics": state.metrics,
        "train_time_s": state.train_time,
        "wall_time_s": state.wall_time,
        "finished": state.finished,
    }
    atomic_torch_save(ckpt, run_dir / "checkpoint.pt")


CHECKPOINT_KEYS = ("run_config", "epoch", "step", "model", "optimizer", "scheduler", "rng",
                   "metrics", "train_time_s", "wall_time_s", "finished")  # fmt: skip


def load_checkpoint(path: Path, device: torch.device, run_cfg: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint of the run ``run_cfg``, loaded with ``weights_only=True`` (tensors and plain
    containers only: a file holding other objects is refused, not run). ValueError if the file is
    not such a checkpoint."""
    what_to_do = "delete it to train that run from the start, or run without --resume"
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(
            f"{path} holds objects other than tensors and plain containers (written by another "
            f"program or an older version, or tampered with); not loaded: {what_to_do}"
        ) from None
    except Exception as e:  # a truncated or damaged file: zip, EOF, pickle errors
        raise ValueError(
            f"{path} is damaged or truncated ({type(e).__name__}): {what_to_do}"
        ) from None
    if not isinstance(ckpt, dict) or not set(CHECKPOINT_KEYS) <= set(ckpt):
        raise ValueError(f"{path} is not a checkpoint of adahessian-bench: {what_to_do}")
    if ckpt["run_config"] != run_cfg:
        raise ValueError(f"{path} was written with another configuration: {what_to_do}")
    return ckpt


def atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def rng_states(gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    """Every RNG state, as tensors and plain containers (what ``weights_only`` loading takes)."""
    name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    states = {
        "python": random.getstate(),  # (version, tuple of ints, float or None)
        "numpy": (name, np.asarray(key).tolist(), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "data": gen.get_state(),
    }
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def set_rng_states(states: dict[str, Any], gen: torch.Generator, device: torch.device) -> None:
    random.setstate(states["python"])
    name, key, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, np.array(key, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    gen.set_state(states["data"])
    if device.type == "cuda" and "cuda" in states:
        torch.cuda.set_rng_state(states["cuda"], device)
