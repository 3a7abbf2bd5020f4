"""The interface between the training loop and a benchmark task: ``Task``, ``Setup``, ``Metric``.

A task is an object with the interface of :class:`Task`. The training loop (``train.py``) knows
nothing else about it: it asks the task for the data of the resolved configuration
(``load(cfg)``: once for all the runs of a benchmark, which differ in optimizer and seed only),
its model (from the profile's ``[model]`` table) and, for each run, a :class:`Setup` holding the
training batches, the loss of a batch and the evaluation (``setup(data, ctx)``, given that data
and the run's :class:`RunContext`). So a new task is a new ``Task`` subclass in a module of its
own (``task_NAME.py``), registered in ``tasks.TASKS``, plus its ``configs/TASK-PROFILE.toml``
files; no change to the loop, the command line or the report.

Every task names its headline metric (``Metric``): the key of the evaluation it is judged by
(``test_acc``, ``test_ppl``, ``test_bleu`` ...), whether higher is better, and how to print it.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn


@dataclass(frozen=True)
class Metric:
    """How a task is judged: ``key`` of the evaluation dict, printed as ``label`` (x ``scale``)."""

    key: str = "test_acc"
    label: str = "test accuracy (%)"
    higher_is_better: bool = True
    scale: float = 100.0  # printed value = scale * value (100 for a fraction in percent)
    fmt: str = ".2f"
    # Further evaluation keys that the report shows (final value, mean ± std over seeds).
    extra: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "label": self.label, "higher_is_better": self.higher_is_better,
                "scale": self.scale, "fmt": self.fmt, "extra": list(self.extra)}  # fmt: skip


class SizedIterable(Protocol):
    def __len__(self) -> int: ...
    def __iter__(self) -> Any: ...


@dataclass
class Setup:
    """What the training loop needs from a task, for one run (one optimizer, one seed).

    ``train_batches`` is iterated once per epoch (its order must come from the generator handed to
    ``Task.setup``, so that checkpoints resume the exact sequence). ``loss(model, batch)`` returns
    the mean loss of the batch (to differentiate) and statistics to sum over the epoch: ``"n"`` (the
    number of items the loss averages over) and any others, each reported as ``train_KEY`` divided
    by the summed ``n``. ``evaluate(model)`` returns the evaluation metrics (``test_loss``, the
    task's metric key, ...), with the model in eval mode and no gradients.

    ``loss`` may be called more than once on one batch (AdaHessian with
    ``hvp="finite-difference"`` calls it again at perturbed parameters: ``step.closure_step``),
    so it must have no side effect but one: a loss that carries state from batch to batch (the
    LSTM's hidden state) holds it in an attribute ``state``, which the training step sets back to
    what the batch began with before each call and to the first call's result after.
    """

    train_batches: SizedIterable
    loss: Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]
    evaluate: Callable[[nn.Module], dict[str, float]]


@dataclass(frozen=True)
class RunContext:
    """What ``Task.setup`` is given besides the data: the run's resolved configuration, its
    device, the generator its training batches must draw their order (and augmentation) from,
    and this process's place among the ranks of a data-parallel run."""

    cfg: dict[str, Any]
    device: torch.device
    generator: torch.Generator
    rank: int = 0
    world_size: int = 1

    @property
    def batch_size(self) -> int:
        """The training items of one step on this rank: ``[train] batch_size // world_size``."""
        return int(self.cfg["train"]["batch_size"]) // self.world_size

    def shard(self, items: Any) -> Any:
        """This rank's share of ``items`` (every ``world_size``-th from ``rank``); all of them
        outside data parallelism."""
        return items if self.world_size == 1 else items[self.rank :: self.world_size]


def init_keys(cls: type, *skip: str) -> tuple[str, ...]:
    """The arguments of ``cls``'s constructor but ``skip``: the [model] keys of a task."""
    return tuple(k for k in inspect.signature(cls).parameters if k not in skip)


class Task(ABC):
    """A benchmark task. Subclasses set the attributes and implement the three methods.

    The keys a profile may hold besides the common ``[train]`` keys (``config.TRAIN_KEYS``):
    ``train_keys`` (of those marked task-only there), ``model_keys`` (the keyword arguments of
    ``model``) and ``data_keys``. A profile with any other key is refused before anything runs.
    """

    name: str
    dataset: str  # a name known to ``fetchers.fetch`` (``data fetch NAME``)
    description: str
    metric: Metric = Metric()
    train_keys: tuple[str, ...] = ()
    model_keys: tuple[str, ...] = ()
    data_keys: tuple[str, ...] = ()

    def check(self, cfg: dict[str, Any]) -> None:
        """Raise ValueError if the resolved configuration cannot work (checks that need no data)."""
        return None

    @abstractmethod
    def load(self, cfg: dict[str, Any]) -> Any:
        """The data that the resolved configuration ``cfg`` trains and evaluates on, in memory and
        ready for ``setup``: fetched into the cache first if needed, then tokenised, split and cut
        to the subsets as ``cfg`` says. It depends on the data-affecting keys of ``cfg`` only,
        never on the optimizers, the seed, the device or the rank (``setup`` takes this rank's
        shard), so that every run of a configuration shares it."""

    @abstractmethod
    def model(self, **kwargs: Any) -> nn.Module:
        """The model, built from the profile's ``[model]`` table."""

    @abstractmethod
    def setup(self, data: Any, ctx: RunContext) -> Setup:
        """Batches, loss and evaluation for one run, of ``data`` (what ``load(ctx.cfg)`` returned).
        ``ctx.cfg`` is the resolved configuration (its ``train`` table holds batch_size,
        eval_batch_size ...; its ``data`` table the task's own options). Data-parallel runs
        (``ctx.world_size`` > 1) give each rank its own shard of the training data
        (``ctx.shard``) and ``ctx.batch_size`` (``batch_size // world_size``) items per step."""
