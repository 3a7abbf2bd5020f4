"""The benchmark tasks: a data set, a model, a loss and an evaluation.

A task is an object with the interface of :class:`Task`. The training loop (``train.py``) knows
nothing else about it: it asks the task for its data (``load``, once per run), its model (from the
profile's ``[model]`` table) and a :class:`Setup` holding the training batches, the loss of a
batch and the evaluation. So a new task is a new ``Task`` subclass, registered in ``TASKS``, plus
its ``configs/TASK-PROFILE.toml`` files; no change to the loop, the command line or the report.

Every task names its headline metric (``Metric``): the key of the evaluation it is judged by
(``test_acc``, ``test_ppl``, ``test_bleu`` ...), whether higher is better, and how to print it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data
from .models import CifarResNet


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
    """

    train_batches: SizedIterable
    loss: Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, float]]]
    evaluate: Callable[[nn.Module], dict[str, float]]


class Task(ABC):
    """A benchmark task. Subclasses set the attributes and implement the three methods."""

    name: str
    dataset: str  # a name known to ``data.fetch``
    description: str
    metric: Metric = Metric()

    @abstractmethod
    def load(self) -> Any:
        """The whole data set, in memory (fetched into the cache first if needed)."""

    @abstractmethod
    def model(self, **kwargs: Any) -> nn.Module:
        """The model, built from the profile's ``[model]`` table."""

    @abstractmethod
    def setup(
        self,
        dataset: Any,
        cfg: dict[str, Any],
        device: torch.device,
        generator: torch.Generator,
        rank: int = 0,
        world_size: int = 1,
    ) -> Setup:
        """Batches, loss and evaluation for one run. ``cfg`` is the resolved configuration (its
        ``train`` table holds batch_size, eval_batch_size, subsets ...; its ``data`` table the
        task's own options). Data-parallel runs (``world_size`` > 1) give each rank its own shard
        of the training data and ``batch_size // world_size`` items per step."""


# ----------------------------------------------------------------------------- image classification


def subset(images: torch.Tensor, labels: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if n and n < len(labels):
        idx = data.balanced_subset(labels, n, seed=0)  # the same subset for every run
        return images[torch.from_numpy(idx)], torch.from_numpy(labels[idx])
    return images, torch.from_numpy(labels)


def classification_loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
    """Cross-entropy of a batch ``(x, y)``; counts the correct predictions."""
    x, y = batch
    out = model(x)
    loss = F.cross_entropy(out, y)
    correct = (out.detach().argmax(1) == y).sum().item()
    return loss, {"n": len(y), "acc": correct}


def evaluate_classifier(model: nn.Module, batches: Iterable[Any]) -> dict[str, float]:
    """Mean cross-entropy and accuracy over a whole (test) set."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in batches:
            out = model(x)
            loss_sum += F.cross_entropy(out, y, reduction="sum").item()
            correct += int((out.argmax(1) == y).sum().item())
            n += len(y)
    return {"test_loss": loss_sum / n, "test_acc": correct / n}


@dataclass(frozen=True)
class ImageTask(Task):
    """CIFAR-style image classification with a ResNet (Fashion-MNIST padded to 32x32, CIFAR-10)."""

    name: str
    dataset: str
    depth: int  # ResNet depth, 6n+2
    in_channels: int
    mean: tuple[float, ...]  # per-channel normalisation (of the training images, in [0, 1])
    std: tuple[float, ...]
    description: str
    metric: Metric = Metric()

    def model(self, **kwargs: Any) -> nn.Module:
        return CifarResNet(kwargs.get("depth", self.depth), self.in_channels, num_classes=10)

    def load(self) -> data.Arrays:
        if self.dataset == "fashion-mnist":
            return data.load_fashion_mnist()
        return data.load_cifar10()

    def setup(
        self,
        dataset: data.Arrays,
        cfg: dict[str, Any],
        device: torch.device,
        generator: torch.Generator,
        rank: int = 0,
        world_size: int = 1,
    ) -> Setup:
        tc = cfg["train"]
        x_train, y_train = subset(data.to_nchw32(dataset.x_train), dataset.y_train,
                                  tc.get("train_subset", 0))  # fmt: skip
        x_test, y_test = subset(data.to_nchw32(dataset.x_test), dataset.y_test,
                                tc.get("test_subset", 0))  # fmt: skip
        if world_size > 1:  # each rank its own shard of the data
            x_train, y_train = x_train[rank::world_size], y_train[rank::world_size]
        train_batches = data.Batches(x_train, y_train, self.mean, self.std,
                                     tc["batch_size"] // world_size, device,
                                     augment=True, shuffle=True, generator=generator)  # fmt: skip
        test_batches = data.Batches(x_test, y_test, self.mean, self.std,
                                    tc.get("eval_batch_size", 1000), device)  # fmt: skip
        return Setup(
            train_batches, classification_loss, lambda m: evaluate_classifier(m, test_batches)
        )


# Per-channel mean and std of the training images in [0, 1].
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        ImageTask("fmnist-resnet20", "fashion-mnist", 20, 1, FMNIST_MEAN, FMNIST_STD,
                  "Fashion-MNIST padded to 32x32, ResNet20"),
        ImageTask("fmnist-resnet32", "fashion-mnist", 32, 1, FMNIST_MEAN, FMNIST_STD,
                  "Fashion-MNIST padded to 32x32, ResNet32"),
        ImageTask("cifar10-resnet20", "cifar10", 20, 3, CIFAR_MEAN, CIFAR_STD,
                  "CIFAR-10, ResNet20 (data needs internet access)"),
        ImageTask("cifar10-resnet32", "cifar10", 32, 3, CIFAR_MEAN, CIFAR_STD,
                  "CIFAR-10, ResNet32 (data needs internet access)"),
    ]
}  # fmt: skip

from .translation import BIBLE_TRANSLATION  # noqa: E402  (the task modules import Task from here)

TASKS[BIBLE_TRANSLATION.name] = BIBLE_TRANSLATION
