"""Training: every (seed, optimizer) pair of a benchmark, one after the other, in one process.

It reads top to bottom: the configuration (``resolve``), one optimizer with one seed built and
ready to train (``build_run``), one epoch of training steps and its evaluation (``run_epoch``), one
run (``train_one``), all runs of the configuration into one output folder (``run``). The rest has
rooms of its own: the training step (step.py), checkpoints (checkpoints.py), the output folder and
its metrics files (folders.py), the machine and env.json (environment.py), data-parallel set-up
(distributed.py), and the optimizers' step cost timed side by side before training (stepcost.py).

A run is deterministic for a given seed on CPU: python, numpy and torch are seeded, and the data
order and augmentation come from their own torch.Generator; a run resumed from its checkpoint ends
with the same metrics as an uninterrupted one (see checkpoints.py).
"""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from . import config, optimizers, stepcost, steptime
from .base import RunContext, Setup
from .checkpoints import RunState, load_checkpoint, restore, save
from .config import config_hash, run_config
from .data import atomic_write_text
from .distributed import average_gradients, init_distributed, world
from .environment import PeakMemory, default_device, environment
from .folders import check_out, hold, say_what_starts_over
from .step import training_step
from .tasks import TASKS

# Fields of each metrics.jsonl line. Those in MEASURED_FIELDS depend on the machine and its load.
# Besides these, a line holds the task's training statistics (``train_acc`` ...) and evaluation
# metrics (``test_loss``, ``test_acc``, ``test_ppl`` ...: see base.Setup).
# Non-finite values (a diverged run's loss) are written as null: the lines are strict JSON.
# ``lr``: the lr of the epoch's last step (of its first group), so a per-step schedule (warm-up,
# inverse_sqrt, cosine) shows where it stands, not where the epoch began.
# ``kind``: "epoch" for the line of a finished epoch (lines without it, of older versions, are
# epoch lines too); "eval" for an evaluation within an epoch, every ``[train] eval_every`` steps,
# which holds EVAL_FIELDS and the evaluation metrics, its ``epoch`` the fraction of epochs done
# (1.25: a quarter into the second epoch). The epoch's last step is evaluated by its epoch line.
METRIC_FIELDS = (
    "optimizer", "seed", "epoch", "step", "lr", "train_loss",
    "epoch_time_s", "train_time_s", "wall_time_s", "mean_step_time_s", "peak_memory_mb",
    "config_hash",
)  # fmt: skip
EVAL_FIELDS = (
    "optimizer", "seed", "kind", "epoch", "step", "lr", "train_time_s", "wall_time_s",
    "config_hash",
)  # fmt: skip
MEASURED_FIELDS = (
    "epoch_time_s", "train_time_s", "wall_time_s", "mean_step_time_s", "peak_memory_mb",
)  # fmt: skip


# ----------------------------------------------------------------------------- configuration


SCHEDULES = config.SCHEDULES


def resolve(
    task: str,
    profile_cfg: dict[str, Any],
    profile: str,
    optimizer_names: list[str],
    seeds: int,
    epochs: int | None = None,
    max_steps: int | None = None,
    batch_size: int | None = None,
    train_subset: int | None = None,
    test_subset: int | None = None,
    device: str | None = None,
    eval_every: int | None = None,
) -> dict[str, Any]:
    """The fully resolved configuration of a benchmark: the profile with the command's overrides.

    ``epochs`` overrides the profile's epochs and scales its lr milestones proportionally.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; known: {', '.join(TASKS)}")
    train = dict(profile_cfg["train"])
    if epochs is not None and epochs != train["epochs"]:
        scale = epochs / train["epochs"]
        if "milestones" in train:
            train["milestones"] = sorted({max(1, round(m * scale)) for m in train["milestones"]})
        train["epochs"] = epochs
    if batch_size is not None:
        train["batch_size"] = batch_size
    if train_subset is not None:
        train["train_subset"] = train_subset
    if test_subset is not None:
        train["test_subset"] = test_subset
    if eval_every is not None:
        train["eval_every"] = eval_every
    if max_steps is not None or "max_steps" not in train:
        train["max_steps"] = max_steps  # per epoch; None = the whole (sub)set
    source = f"{task}-{profile}.toml" if profile in config.PROFILES else profile
    unknown = [o for o in optimizer_names if not optimizers.is_known(o)]
    if unknown:
        raise ValueError(
            f"unknown optimizer(s) {', '.join(unknown)}; known: {', '.join(optimizers.OPTIMIZERS)}"
        )
    missing = [o for o in optimizer_names if o not in profile_cfg["optimizers"]]
    if missing or not optimizer_names:
        raise ValueError(
            f"{source} has no [optimizers.{(missing or ['NAME'])[0]}] table; choose --optimizers "
            f"among those it has: {', '.join(profile_cfg['optimizers']) or 'none'}"
        )
    schedule = train.setdefault("schedule", config.DEFAULT_SCHEDULE)
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    cfg = {
        "task": task,
        "profile": profile,
        "metric": TASKS[task].metric.as_dict(),
        "train": train,
        "model": dict(profile_cfg.get("model", {})),
        "data": dict(profile_cfg.get("data", {})),
        "optimizers": {o: profile_cfg["optimizers"][o] for o in optimizer_names},
        "seeds": list(range(seeds)),
        "device": device or default_device(),
    }
    try:
        check(cfg)
    except ValueError as e:
        raise ValueError(f"{source}: {e}") from None
    return cfg


def check(cfg: dict[str, Any]) -> None:
    """Build the model (on the meta device: no memory, no time) and every optimizer (on a dummy
    parameter) of a resolved configuration, so that a bad value fails before anything runs."""
    task = TASKS[cfg["task"]]
    task.check(cfg)
    try:
        with torch.device("meta"):
            task.model(**cfg["model"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"[model]: {e}") from None
    for name, hp in cfg["optimizers"].items():
        try:
            optimizers.check(name, hp)
        except ValueError as e:
            raise ValueError(f"[optimizers.{name}] {e}") from None


def process_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` as this process runs it and config.json holds it: the device of this rank, and the
    world size under torchrun."""
    cfg = {**cfg, "device": init_distributed(cfg["device"])}
    if world()[1] > 1:
        cfg["world_size"] = world()[1]
    return cfg


# ----------------------------------------------------------------------------- the run


@dataclass
class Run:
    """One optimizer with one seed, built and ready to train (``build_run``)."""

    cfg: dict[str, Any]
    opt_name: str
    seed: int
    ctx: RunContext  # device, the generator of the data order, rank and world size
    model: torch.nn.Module
    setup: Setup
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    per_step: bool  # the scheduler steps after every optimizer step (else after every epoch)
    steps_per_epoch: int
    total_steps: int  # epochs x steps_per_epoch, times the [train] budget
    run_cfg: dict[str, Any]  # config.run_config: what this run's checkpoint must have been of
    cfg_hash: str  # config.config_hash(run_cfg), in every metrics record

    @property
    def epochs(self) -> int:
        """The epochs the run takes: with a ``budget``, its last one may be cut short."""
        return math.ceil(self.total_steps / self.steps_per_epoch)

    @property
    def writes(self) -> bool:
        """Rank 0 alone writes the run's files."""
        return self.ctx.rank == 0


def build_run(cfg: dict[str, Any], opt_name: str, seed: int, dataset: Any) -> Run:
    """Seed everything, build the model, the task's batches, loss and evaluation (of ``dataset``,
    what ``Task.load(cfg)`` returned), the optimizer and its learning-rate schedule."""
    task = TASKS[cfg["task"]]
    tc = cfg["train"]
    device = torch.device(cfg["device"])
    # Seed everything; the model's initial weights depend on the seed only (not the optimizer).
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    rank, world_size = world()
    gen = torch.Generator().manual_seed(seed)  # data order and augmentation
    model = task.model(**cfg.get("model", {})).to(device)
    if world_size > 1:
        from adahessian.distributed import broadcast_module

        broadcast_module(model)  # the same seed gives the same weights; make sure of it
        # Each rank its own shard of the data and of each batch.
        if tc["batch_size"] % world_size:
            raise ValueError(
                f"batch size {tc['batch_size']} is not divisible by {world_size} ranks"
            )
        gen.manual_seed(seed * 1000 + rank)
    ctx = RunContext(cfg, device, gen, rank, world_size)
    setup = task.setup(dataset, ctx)
    steps_per_epoch = len(setup.train_batches)
    if tc["max_steps"]:
        steps_per_epoch = min(steps_per_epoch, tc["max_steps"])

    group = torch.distributed.group.WORLD if world_size > 1 else None
    optimizer = optimizers.build(
        opt_name, model.parameters(), cfg["optimizers"][opt_name], seed, process_group=group
    )
    total_steps = total_steps_of(tc, steps_per_epoch)
    scheduler, per_step = make_scheduler(optimizer, tc, steps_per_epoch, total_steps)
    run_cfg = run_config(cfg, opt_name, seed)
    return Run(cfg, opt_name, seed, ctx, model, setup, optimizer, scheduler, per_step,
               steps_per_epoch, total_steps, run_cfg, config_hash(run_cfg))  # fmt: skip


def total_steps_of(tc: dict[str, Any], steps_per_epoch: int) -> int:
    """The steps of a run: ``epochs`` x ``steps_per_epoch``, times the ``[train] budget`` (1.5:
    half as many steps again, the last epoch cut short), at least one."""
    return max(1, round(tc.get("budget", 1) * tc["epochs"] * steps_per_epoch))


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    tc: dict[str, Any],
    steps_per_epoch: int,
    total_steps: int | None = None,
) -> tuple[torch.optim.lr_scheduler.LRScheduler, bool]:
    """The profile's learning-rate schedule; the flag says whether it steps per step (else per
    epoch). ``total_steps``: the run's steps (default ``epochs`` x ``steps_per_epoch``); a
    ``[train] budget`` B stretches the schedule to it: the milestones at B x theirs, the cosine
    over all of it (``inverse_sqrt`` and ``constant`` have no horizon to stretch).

    - ``multistep``: lr x ``gamma`` after each epoch in ``milestones`` (the paper's image recipe);
    - ``inverse_sqrt``: linear warm-up over ``warmup_steps``, then lr * sqrt(warmup / step) (the
      Transformer recipe of fairseq, which the paper's translation experiments use);
    - ``cosine``: linear warm-up over ``warmup_steps`` (default 0), then cosine decay to 0 at the
      last step;
    - ``constant``: the optimizer's lr throughout.
    """
    schedule = config.schedule_of(tc)
    budget = tc.get("budget", 1)
    if schedule == "multistep":
        milestones = sorted({max(1, round(m * budget)) for m in tc["milestones"]})
        sched = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, tc["gamma"])
        return sched, False
    warmup = int(tc.get("warmup_steps", 0))
    total = max(1, total_steps or tc["epochs"] * steps_per_epoch)

    def factor(step: int) -> float:  # step = number of optimizer steps taken so far
        s = step + 1
        if schedule == "constant":
            return 1.0
        if warmup and s <= warmup:
            return s / warmup
        if schedule == "inverse_sqrt":
            return math.sqrt(warmup / s) if warmup else 1.0 / math.sqrt(s)
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), True


# ----------------------------------------------------------------------------- one epoch


@dataclass
class EpochStats:
    """The training steps of one epoch: the loss summed over items, the task's statistics
    summed (``n``: the items the losses average over), each step's time."""

    loss_sum: float = 0.0
    sums: dict[str, float] = field(default_factory=lambda: {"n": 0.0})
    step_times: list[float] = field(default_factory=list)
    diverged: bool = False  # a step's loss was not finite (the epoch stopped there)
    last_lr: float | None = None  # the lr the epoch's last step took (None: no step)
    started: float = field(default_factory=time.perf_counter)  # when the epoch began
    eval_time: float = 0.0  # seconds of evaluations within the epoch (not training time)


def train_epoch(run: Run, state: RunState, bar: tqdm) -> EpochStats:
    """The training steps of one epoch (at most ``run.steps_per_epoch``; it stops after a step
    whose loss is not finite). Counts the steps in ``state.step``."""
    model, optimizer, device = run.model, run.optimizer, run.ctx.device
    world_size = run.ctx.world_size
    stats = EpochStats()
    model.train()
    for i, batch in enumerate(run.setup.train_batches):
        if i == run.steps_per_epoch or state.step == run.total_steps:
            break
        t0 = time.perf_counter()
        loss, batch_stats = training_step(
            run.setup, model, optimizer, batch, average_gradients if world_size > 1 else None
        )
        stats.last_lr = optimizer.param_groups[0]["lr"]
        if run.per_step:
            run.scheduler.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stats.step_times.append(time.perf_counter() - t0)
        state.step += 1
        if world_size > 1:  # the mean over ranks, so that every rank sees a divergence
            loss = loss.detach().clone()
            torch.distributed.all_reduce(loss)
            loss /= world_size
        loss_value = loss.item()
        stats.loss_sum += loss_value * batch_stats["n"]
        for k, v in batch_stats.items():
            stats.sums[k] = stats.sums.get(k, 0.0) + v
        bar.update(1)
        if not math.isfinite(loss_value):
            stats.diverged = True
            break
        every = run.cfg["train"].get("eval_every") or 0
        last = i + 1 == run.steps_per_epoch or state.step == run.total_steps  # of the epoch
        if every and state.step % every == 0 and not last:
            state.metrics.append(eval_record(run, state, stats, i + 1))
    return stats


def eval_record(run: Run, state: RunState, stats: EpochStats, steps_done: int) -> dict[str, Any]:
    """Evaluate within the epoch, after ``steps_done`` of its steps: the metrics line of kind
    "eval" (see METRIC_FIELDS). Its time is not training time (``stats.eval_time``)."""
    t0 = time.perf_counter()
    trained = state.train_time + (t0 - stats.started - stats.eval_time)  # up to this evaluation
    evaluation = evaluate(run)
    run.model.train()
    now = time.perf_counter()
    stats.eval_time += now - t0
    return {
        "optimizer": run.opt_name,
        "seed": run.seed,
        "kind": "eval",
        "epoch": round(state.epoch + steps_done / run.steps_per_epoch, 6),
        "step": state.step,
        "lr": stats.last_lr,
        **evaluation,
        "train_time_s": trained,
        "wall_time_s": state.wall_time + (now - stats.started),
        "config_hash": run.cfg_hash,
    }


def evaluate(run: Run) -> dict[str, float]:
    """The task's evaluation of the model (every rank evaluates one and the same model)."""
    if run.ctx.world_size > 1:
        from adahessian.distributed import average_buffers

        average_buffers(run.model)  # BatchNorm statistics, so every rank evaluates one model
    return run.setup.evaluate(run.model)


def epoch_record(
    run: Run, state: RunState, lr: float, stats: EpochStats, evaluation: dict[str, float],
    epoch_time: float, peak_memory: float,
) -> dict[str, Any]:  # fmt: skip
    """The metrics.jsonl line of the epoch that ``state`` has just counted (see METRIC_FIELDS)."""
    sums = stats.sums
    record = {
        "optimizer": run.opt_name,
        "seed": run.seed,
        "kind": "epoch",
        "epoch": state.epoch,
        "epochs": run.epochs,
        "step": state.step,
        "lr": lr,
        "train_loss": stats.loss_sum / sums["n"],
        **{f"train_{k}": v / sums["n"] for k, v in sums.items() if k != "n"},
        **evaluation,
        "epoch_time_s": epoch_time,
        "train_time_s": state.train_time,
        "wall_time_s": state.wall_time,
        "mean_step_time_s": float(np.mean(stats.step_times)),
        "peak_memory_mb": peak_memory,
        "config_hash": run.cfg_hash,
    }
    if stats.diverged:
        record["diverged"] = True
    return record


def run_epoch(run: Run, state: RunState, memory: PeakMemory, bar: tqdm) -> dict[str, Any]:
    """Train one epoch, evaluate, step a per-epoch schedule; add the epoch's record to
    ``state`` (its metrics, counters and times) and return it."""
    memory.reset()
    lr = run.optimizer.param_groups[0]["lr"]
    stats = train_epoch(run, state, bar)
    epoch_start = stats.started
    lr = stats.last_lr if stats.last_lr is not None else lr  # a per-step schedule moved it
    train_time = time.perf_counter() - epoch_start - stats.eval_time
    evaluation = evaluate(run)
    if not run.per_step:
        run.scheduler.step()
    epoch_time = time.perf_counter() - epoch_start
    state.epoch += 1
    state.train_time += train_time
    state.wall_time += epoch_time
    record = epoch_record(run, state, lr, stats, evaluation, epoch_time, memory.read())
    state.metrics.append(record)
    state.finished = stats.diverged or state.epoch == run.epochs
    key = TASKS[run.cfg["task"]].metric.key
    bar.set_postfix({"loss": f"{record['train_loss']:.3f}", key: f"{record[key]:.4f}"})
    return record


# ----------------------------------------------------------------------------- one run


def progress_bar(run: Run, state: RunState, progress: bool) -> tqdm:
    """A bar over the run's steps, from those already taken (rank 0 alone shows it)."""
    return tqdm(
        total=run.total_steps,
        initial=state.step,
        desc=f"{run.opt_name} seed {run.seed}",
        disable=not progress or not run.writes,
        dynamic_ncols=True,
        mininterval=1.0,
    )


def train_one(
    cfg: dict[str, Any],
    opt_name: str,
    seed: int,
    dataset: Any,
    run_dir: Path,
    resume: bool,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train one optimizer with one seed; return its per-epoch metrics."""
    run = build_run(cfg, opt_name, seed, dataset)
    state = restore(run, run_dir, resume)
    if state.finished:
        return state.metrics
    memory = PeakMemory(run.ctx.device)
    with progress_bar(run, state, progress) as bar:  # closed (its line ended) however it ends
        for _ in range(state.epoch, run.epochs):
            record = run_epoch(run, state, memory, bar)
            if run.writes:
                save(run, state, run_dir)
            if record.get("diverged"):
                tqdm.write(f"{opt_name} seed {seed}: the loss is not finite at epoch {state.epoch}")
                break
    return state.metrics


# ----------------------------------------------------------------------------- all runs


def run(
    cfg: dict[str, Any],
    out: Path,
    resume: bool = False,
    progress: bool = True,
    command: str = "",
    dataset: Any = None,
) -> None:
    """Train every (seed, optimizer) pair of ``cfg`` and write the results under ``out``.

    ``command`` is the command line, recorded in env.json for the report. ``dataset``: the task's
    data for this configuration (what ``Task.load(cfg)`` returns), loaded here if not given."""
    cfg = process_config(cfg)
    out = Path(out)
    if world()[0] > 0:  # rank 0 alone checks, locks and writes the folder
        _run(cfg, out, resume, progress, command, dataset)
        return
    check_out(cfg, out)  # before the lock: a refused call creates no lock file
    with hold(out):
        check_out(cfg, out)  # again, now that no other run can write the folder
        _run(cfg, out, resume, progress, command, dataset)


def _run(
    cfg: dict[str, Any], out: Path, resume: bool, progress: bool, command: str, dataset: Any
) -> None:
    device = torch.device(cfg["device"])
    if dataset is None:
        dataset = TASKS[cfg["task"]].load(cfg)  # before writing: no data, nothing written
    if resume:  # every checkpoint sound before anything is written (else ValueError)
        for seed in cfg["seeds"]:
            for opt_name in cfg["optimizers"]:
                path = out / f"{opt_name}-seed{seed}" / "checkpoint.pt"
                if path.is_file():
                    load_checkpoint(path, torch.device("cpu"), run_config(cfg, opt_name, seed))
    if world()[0] == 0:
        if not resume:
            say_what_starts_over(cfg, out)
        config.mark(out, "run")
        atomic_write_text(out / "config.json", json.dumps(cfg, indent=2) + "\n")
        env = environment(device, command)
        atomic_write_text(out / "env.json", json.dumps(env, indent=2) + "\n")
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        with warnings.catch_warnings():
            # torch warns on every backward(create_graph=True) that .grad and its graph form a
            # cycle; the optimizer frees the graph after each Hessian step: noise here.
            warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph")
            if device.type == "cpu":
                # Bitwise repeatable runs (CPU kernels already are; this guards the rest).
                torch.use_deterministic_algorithms(True, warn_only=True)
            measure_step_cost(cfg, dataset, out, resume, progress)
            _run_all(cfg, dataset, out, resume, progress)
    finally:
        torch.use_deterministic_algorithms(deterministic)


def measure_step_cost(
    cfg: dict[str, Any], dataset: Any, out: Path, resume: bool, progress: bool
) -> None:
    """Time the optimizers' steps side by side (``stepcost``) into ``out/step_cost.json``, unless
    ``[train] cost_rounds`` is 0, the run is data-parallel, or a resumed folder has it already."""
    rounds = cfg["train"].get("cost_rounds", stepcost.ROUNDS)
    path = out / steptime.COST_FILE
    if not rounds or world()[1] > 1 or (resume and path.is_file()):
        return
    path.unlink(missing_ok=True)  # a run that starts over measures again
    cost = stepcost.measure(cfg, dataset, rounds, progress=progress)
    atomic_write_text(path, json.dumps(cost, indent=2) + "\n")


def _run_all(cfg: dict[str, Any], dataset: Any, out: Path, resume: bool, progress: bool) -> None:
    metric = TASKS[cfg["task"]].metric
    pick = max if metric.higher_is_better else min
    for seed in cfg["seeds"]:
        for opt_name in cfg["optimizers"]:
            metrics = train_one(cfg, opt_name, seed, dataset, out / f"{opt_name}-seed{seed}",
                                resume, progress)  # fmt: skip
            if metrics and world()[0] == 0:
                last = metrics[-1]
                best = pick(m[metric.key] for m in metrics)
                print(
                    f"{opt_name} seed {seed}: {last['epoch']} epochs, "
                    f"final {metric.key} {last[metric.key]:.4f}, best {best:.4f}, "
                    f"{last['train_time_s']:.0f} s training"
                )
