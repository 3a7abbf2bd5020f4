"""The image tasks: Fashion-MNIST (padded to 32x32) and CIFAR-10 classification with ResNets.

``ImageTask`` (data from ``data_images``, the model from ``models``), the class-balanced training,
validation and test (sub)sets it trains and evaluates on (``subset``, ``train_valid_indices``),
its evaluation (``evaluate_classifier``) and the four image tasks (``IMAGE_TASKS``), which
``tasks.TASKS`` registers. The interface every task implements is in ``base.py``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import data_images
from .base import RunContext, Setup, Task
from .models import CifarResNet
from .task_text_classification import classification_loss


def subset(images: torch.Tensor, labels: np.ndarray, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    if n and n < len(labels):
        idx = data_images.balanced_subset(labels, n, seed=0)  # the same subset for every run
        return images[torch.from_numpy(idx)], torch.from_numpy(labels[idx])
    return images, torch.from_numpy(labels)


def train_valid_indices(
    labels: np.ndarray, n_train: int, n_valid: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the training (sub)set and of a validation set held out of the training images.

    The training subset is the one ``subset`` picks (so a profile's training images do not change
    when it adds a validation set); the validation set is a class-balanced choice among the
    training images that subset left out. With ``n_train`` 0 (or at least all), the validation
    set is chosen first and the training set is every other training image."""
    every = np.arange(len(labels))
    whole = not 0 < n_train < len(labels)
    if whole and n_valid:
        counts = np.bincount(labels)
        if n_valid // len(counts) >= counts.min():
            raise ValueError(
                f"valid_subset {n_valid} would leave no training images of some class: "
                "make it smaller"
            )
        valid = data_images.balanced_subset(labels, n_valid, seed=1)
        return np.setdiff1d(every, valid), valid
    train = every if whole else data_images.balanced_subset(labels, n_train, seed=0)
    if not n_valid:
        return train, every[:0]
    rest = np.setdiff1d(every, train)
    counts = np.bincount(labels[rest])
    if n_valid // len(counts) > counts.min():
        raise ValueError(
            f"valid_subset {n_valid} needs {n_valid // len(counts)} images of each class "
            f"besides train_subset {n_train}, and some class has only {counts.min()} left: "
            "make valid_subset or train_subset smaller"
        )
    return train, rest[data_images.balanced_subset(labels[rest], n_valid, seed=1)]


def evaluate_classifier(
    model: nn.Module, batches: Iterable[Any], prefix: str = "test"
) -> dict[str, float]:
    """Mean cross-entropy and accuracy over a whole set: ``{prefix}_loss``, ``{prefix}_acc``."""
    model.eval()
    loss_sum, correct, n = 0.0, 0, 0
    with torch.no_grad():
        for x, y in batches:
            out = model(x)
            loss_sum += F.cross_entropy(out, y, reduction="sum").item()
            correct += int((out.argmax(1) == y).sum().item())
            n += len(y)
    return {f"{prefix}_loss": loss_sum / n, f"{prefix}_acc": correct / n}


@dataclass(frozen=True)
class Images:
    """The images of a configuration, uint8 (N, C, 32, 32), and their int64 labels: the training
    and the test (sub)set it asks for, and the validation set held out of the training images
    (empty without ``valid_subset``)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_valid: torch.Tensor
    y_valid: torch.Tensor


@dataclass(frozen=True)
class ImageTask(Task):
    """CIFAR-style image classification with a ResNet (Fashion-MNIST padded to 32x32, CIFAR-10)."""

    name: str
    dataset: str
    depth: int  # ResNet depth, 6n+2
    in_channels: int
    mean: tuple[float, ...]  # per-channel normalisation (of the training images, in [0, 1])
    std: tuple[float, ...]
    description: str  # the metric: Task's default, test accuracy
    model_keys = ("depth",)
    train_keys = ("valid_subset",)
    classes = 10

    def model(self, **kwargs: Any) -> nn.Module:
        return CifarResNet(kwargs.get("depth", self.depth), self.in_channels, self.classes)

    def check(self, cfg: dict[str, Any]) -> None:
        for key in ("train_subset", "test_subset", "valid_subset"):
            n = cfg["train"].get(key, 0)
            if n % self.classes:
                raise ValueError(
                    f"{key} {n} is not a multiple of the {self.classes} classes (the subsets "
                    "are class-balanced)"
                )

    def load(self, cfg: dict[str, Any]) -> Images:
        if self.dataset == "fashion-mnist":
            arrays = data_images.load_fashion_mnist()
        else:
            arrays = data_images.load_cifar10()
        tc = cfg["train"]
        x, y = data_images.to_nchw32(arrays.x_train), arrays.y_train
        train, valid = train_valid_indices(y, tc.get("train_subset", 0), tc.get("valid_subset", 0))
        x_test, y_test = subset(data_images.to_nchw32(arrays.x_test), arrays.y_test,
                                tc.get("test_subset", 0))  # fmt: skip
        return Images(x[torch.from_numpy(train)], torch.from_numpy(y[train]), x_test, y_test,
                      x[torch.from_numpy(valid)], torch.from_numpy(y[valid]))  # fmt: skip

    def setup(self, images: Images, ctx: RunContext) -> Setup:
        eval_batch_size = ctx.cfg["train"].get("eval_batch_size", 1000)
        x_train, y_train = ctx.shard(images.x_train), ctx.shard(images.y_train)
        train_batches = data_images.Batches(x_train, y_train, self.mean, self.std, ctx.batch_size,
                                     ctx.device, augment=True, shuffle=True,
                                     generator=ctx.generator)  # fmt: skip
        test_batches = data_images.Batches(images.x_test, images.y_test, self.mean, self.std,
                                    eval_batch_size, ctx.device)  # fmt: skip
        valid_batches = data_images.Batches(images.x_valid, images.y_valid, self.mean, self.std,
                                     eval_batch_size, ctx.device)  # fmt: skip

        def evaluate(model: nn.Module) -> dict[str, float]:
            metrics = evaluate_classifier(model, test_batches)
            if len(images.y_valid):
                metrics |= evaluate_classifier(model, valid_batches, "valid")
            return metrics

        return Setup(train_batches, classification_loss, evaluate)


# Per-channel mean and std of the training images in [0, 1].
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

IMAGE_TASKS: tuple[ImageTask, ...] = (
    ImageTask("fmnist-resnet20", "fashion-mnist", 20, 1, FMNIST_MEAN, FMNIST_STD,
              "Fashion-MNIST padded to 32x32, ResNet20"),
    ImageTask("fmnist-resnet32", "fashion-mnist", 32, 1, FMNIST_MEAN, FMNIST_STD,
              "Fashion-MNIST padded to 32x32, ResNet32"),
    ImageTask("cifar10-resnet20", "cifar10", 20, 3, CIFAR_MEAN, CIFAR_STD,
              "CIFAR-10, ResNet20 (data needs internet access)"),
    ImageTask("cifar10-resnet32", "cifar10", 32, 3, CIFAR_MEAN, CIFAR_STD,
              "CIFAR-10, ResNet32 (data needs internet access)"),
)  # fmt: skip
