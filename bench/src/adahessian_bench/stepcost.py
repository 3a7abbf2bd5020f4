"""The cost of a training step of every optimizer of a run, measured side by side before training.

Wall-clock training times taken one run after another measure the machine's load as much as the
optimizers: whoever trains at a busy moment looks slow. So ``train.run`` first times the
optimizers it is about to train *interleaved*: in each round every contender takes one training
step (forward, backward, optimizer step: ``step.training_step``, the loop's own) on the same batch,
the order rotating from round to round, and the median over rounds is its cost. The load of the
moment then falls on all contenders alike, and the report's time axis is the number of steps
times that cost (``steptime.cost_time``); the raw wall clock stays in the metrics
(``train_time_s``).

AdaHessian takes two kinds of step: a Hessian step (the Hutchinson product; with
``hvp="autograd"`` the gradient's graph kept and one more backward pass through it, about 4
gradients' cost; with ``hvp="finite-difference"`` one more ordinary forward and backward pass at
θ + εv, about 2) and, with ``update_interval`` > 1, plain steps in between that cost about what
Adam's cost. A finite-difference variant (``adahessian-fd``) is timed like any other, through its
closure step. Each is timed as a contender of its own (``NAME:hessian`` with the
Hessian every step, ``NAME:plain`` with none after the first), and a run's time after ``s`` steps
counts how many of them were Hessian steps under its ``update_interval`` and ``hessian_warmup``
(``steptime.hessian_steps``). A first-order optimizer's two costs are the same number.

Interleaving holds under steady load, not under load that comes and goes: a burst that lands on
one contender's steps inflates its wall-clock median alone. So on CPU each step is timed by the
CPU time of the process (``time.process_time``, divided by the torch threads), which does not
count the time spent waiting for a core, and that is the cost (``"clock": "cpu"``); the wall
clock of each step is kept beside it (``wall_step_s``, ``wall_samples_s``). On an idle machine
with one torch thread the two agree; ``benchmarks/cost_under_load.py`` measures both under
bursty load. On GPU the cost is the wall clock of the synchronised step (``"clock": "wall"``).

The measurement starts from the same initial weights (seed 0) for every contender, uses the
generator of seed 0 for the batches, and leaves no trace on the runs: each run seeds every RNG
itself before it starts.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from . import optimizers
from .base import RunContext
from .step import training_step
from .tasks import TASKS

ROUNDS, WARMUP = 10, 2  # timed rounds, and untimed rounds first (allocations, caches, lazy init)
RUN_SHARE = 25  # a short run gets fewer rounds: at most (its steps / RUN_SHARE), at least 1
NEVER = 2**62  # an update_interval that no run reaches: every step after the first is plain


def contenders(cfg: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(optimizer, step kind, hyperparameters to time it with) for every step kind the runs of
    ``cfg`` take."""
    out = []
    for name, hp in cfg["optimizers"].items():
        if optimizers.first_order(name):
            out.append((name, "step", hp))
            continue
        out.append((name, "hessian", {**hp, "update_interval": 1, "hessian_warmup": 0}))
        if int(hp.get("update_interval", 1)) > 1:
            out.append((name, "plain", {**hp, "hessian_warmup": 0}))
    return out


def _batches(setup: Any, n: int) -> list[Any]:
    batches: list[Any] = []
    while len(batches) < n:
        before = len(batches)
        for batch in setup.train_batches:
            batches.append(batch)
            if len(batches) == n:
                break
        if len(batches) == before:
            raise ValueError("the task gave no training batch to time the optimizers on")
    return batches


def clock(device: torch.device) -> tuple[str, Callable[[], float]]:
    """The clock that step costs are read from: on CPU, the process's CPU time per torch thread
    (``"cpu"``: a thread waiting for a core adds nothing); elsewhere the wall clock (``"wall"``:
    the host's CPU time says nothing of a GPU's)."""
    if device.type != "cpu":
        return "wall", time.perf_counter
    threads = max(1, torch.get_num_threads())
    return "cpu", lambda: time.process_time() / threads


def measure(
    cfg: dict[str, Any],
    dataset: Any,
    rounds: int = ROUNDS,
    warmup: int = WARMUP,
    progress: bool = True,
) -> dict[str, Any]:
    """Time every optimizer of ``cfg`` side by side (see the module's docstring); return what
    ``step_cost.json`` holds: per optimizer ``hessian_step_s`` and ``plain_step_s`` (medians,
    seconds, on ``clock``), the same on the wall clock (``wall_hessian_step_s``,
    ``wall_plain_step_s``), and every contender's timed samples on both."""
    if rounds < 1 or warmup < 0:
        raise ValueError(f"rounds must be >= 1 and warmup >= 0, got {rounds} and {warmup}")
    task = TASKS[cfg["task"]]
    device = torch.device(cfg["device"])
    torch.manual_seed(0)
    model0 = task.model(**cfg.get("model", {})).to(device)
    setup = task.setup(dataset, RunContext(cfg, device, torch.Generator().manual_seed(0)))
    per_epoch = len(setup.train_batches)
    if cfg["train"].get("max_steps"):
        per_epoch = min(per_epoch, cfg["train"]["max_steps"])
    # The measurement costs at most about 1/RUN_SHARE of a run's steps per contender.
    rounds = max(1, min(rounds, cfg["train"]["epochs"] * per_epoch // RUN_SHARE))
    warmup = min(warmup, rounds)
    batches = _batches(setup, rounds + warmup)
    runs = []
    for name, step_kind, hp in contenders(cfg):
        model = copy.deepcopy(model0)
        model.train()
        opt = optimizers.build(name, model.parameters(), hp, 0)
        runs.append((f"{name}:{step_kind}", model, opt))
    clock_name, now = clock(device)
    samples: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    wall: dict[str, list[float]] = {label: [] for label, _, _ in runs}
    with tqdm(total=(rounds + warmup) * len(runs), desc="timing the optimizers' steps",
              disable=not progress, dynamic_ncols=True, mininterval=1.0) as bar:  # fmt: skip
        for r, batch in enumerate(batches):
            for label, model, opt in _rotated(runs, r):
                hessian = bool(getattr(opt, "hessian_due", False))
                t0, c0 = time.perf_counter(), now()
                training_step(setup, model, opt, batch)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                elapsed, spent = time.perf_counter() - t0, now() - c0
                if label.endswith(":plain"):
                    opt.update_interval = NEVER  # after its first (Hessian) step: plain only
                if r >= warmup and not (hessian and label.endswith(":plain")):
                    samples[label].append(spent if clock_name == "cpu" else elapsed)
                    wall[label].append(elapsed)
                bar.update(1)
    result: dict[str, Any] = {
        "clock": clock_name,
        "rounds": rounds,
        "warmup_rounds": warmup,
        "optimizers": {
            name: {**medians(name, samples), **medians(name, wall, "wall_")}
            for name in cfg["optimizers"]
        },
        "samples_s": samples,
        "wall_samples_s": wall,
    }
    return result


def medians(name: str, samples: dict[str, list[float]], prefix: str = "") -> dict[str, float]:
    """``{PREFIXhessian_step_s, PREFIXplain_step_s}`` of optimizer ``name``: the medians of its
    contenders' ``samples`` (a first-order optimizer's two are one)."""
    if optimizers.first_order(name):
        step = float(np.median(samples[f"{name}:step"]))
        return {f"{prefix}hessian_step_s": step, f"{prefix}plain_step_s": step}
    h = float(np.median(samples[f"{name}:hessian"]))
    plain = samples.get(f"{name}:plain")
    p = float(np.median(plain)) if plain else h
    return {f"{prefix}hessian_step_s": h, f"{prefix}plain_step_s": p}


def _rotated(items: list[Any], r: int) -> Iterable[Any]:
    k = r % len(items)
    return items[k:] + items[:k]
