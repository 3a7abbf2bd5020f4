"""The benchmark tasks: a data set and a model."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from . import data
from .models import CifarResNet


@dataclass(frozen=True)
class Task:
    name: str
    dataset: str  # a name known to data.fetch
    depth: int  # ResNet depth, 6n+2
    in_channels: int
    mean: tuple[float, ...]  # per-channel normalisation (of the training images, in [0, 1])
    std: tuple[float, ...]
    description: str

    def model(self) -> nn.Module:
        return CifarResNet(self.depth, self.in_channels, num_classes=10)

    def load(self) -> data.Arrays:
        if self.dataset == "fashion-mnist":
            return data.load_fashion_mnist()
        return data.load_cifar10()


# Per-channel mean and std of the training images in [0, 1].
FMNIST_MEAN, FMNIST_STD = (0.2860,), (0.3530,)
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)

TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task("fmnist-resnet20", "fashion-mnist", 20, 1, FMNIST_MEAN, FMNIST_STD,
             "Fashion-MNIST padded to 32x32, ResNet20"),
        Task("fmnist-resnet32", "fashion-mnist", 32, 1, FMNIST_MEAN, FMNIST_STD,
             "Fashion-MNIST padded to 32x32, ResNet32"),
        Task("cifar10-resnet20", "cifar10", 20, 3, CIFAR_MEAN, CIFAR_STD,
             "CIFAR-10, ResNet20 (data needs internet access)"),
        Task("cifar10-resnet32", "cifar10", 32, 3, CIFAR_MEAN, CIFAR_STD,
             "CIFAR-10, ResNet32 (data needs internet access)"),
    ]
}  # fmt: skip
