"""The image tasks (task_images.py): the validation set held out of the training images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from adahessian_bench import data_images
from adahessian_bench.base import RunContext
from adahessian_bench.task_images import train_valid_indices
from adahessian_bench.tasks import TASKS

LABELS = np.repeat(np.arange(10), 30)[np.random.default_rng(3).permutation(300)]


def test_valid_is_held_out_of_the_training_images_and_balanced() -> None:
    train, valid = train_valid_indices(LABELS, 100, 50)
    # unchanged by valid
    assert np.array_equal(train, data_images.balanced_subset(LABELS, 100, seed=0))
    assert len(valid) == 50 and not set(train) & set(valid)
    assert np.array_equal(np.bincount(LABELS[valid]), np.full(10, 5))
    assert np.array_equal(np.bincount(LABELS[train]), np.full(10, 10))


def test_without_valid_the_training_set_is_the_old_subset() -> None:
    train, valid = train_valid_indices(LABELS, 100, 0)
    assert (
        np.array_equal(train, data_images.balanced_subset(LABELS, 100, seed=0)) and len(valid) == 0
    )
    train, valid = train_valid_indices(LABELS, 0, 0)
    assert np.array_equal(train, np.arange(300)) and len(valid) == 0


def test_all_training_images_but_the_valid_ones() -> None:
    train, valid = train_valid_indices(LABELS, 0, 50)
    assert len(valid) == 50 and np.array_equal(
        np.sort(np.concatenate([train, valid])), np.arange(300)
    )


@pytest.mark.parametrize(("n_train", "n_valid", "words"), [
    (250, 60, "some class has only 5 left"),
    (0, 300, "would leave no training images"),
])  # fmt: skip
def test_a_valid_subset_that_does_not_fit_is_refused(
    n_train: int, n_valid: int, words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        train_valid_indices(LABELS, n_train, n_valid)


def test_valid_subset_must_be_a_multiple_of_the_classes() -> None:
    with pytest.raises(ValueError, match="valid_subset 15 is not a multiple of the 10 classes"):
        TASKS["fmnist-resnet20"].check({"train": {"valid_subset": 15}})


def test_fmnist_evaluates_the_validation_set(data_cache: Path) -> None:
    task = TASKS["fmnist-resnet20"]
    cfg = {"train": {"train_subset": 100, "test_subset": 50, "valid_subset": 30,
                     "batch_size": 10, "eval_batch_size": 20}}  # fmt: skip
    images = task.load(cfg)
    arrays = data_images.load_fashion_mnist()
    train, valid = train_valid_indices(arrays.y_train, 100, 30)
    assert torch.equal(
        images.x_valid, data_images.to_nchw32(arrays.x_train)[torch.from_numpy(valid)]
    )
    assert torch.equal(images.y_train, torch.from_numpy(arrays.y_train[train]))
    torch.manual_seed(0)
    model = task.model()
    ctx = RunContext(cfg, torch.device("cpu"), torch.Generator().manual_seed(0))
    metrics = task.setup(images, ctx).evaluate(model)
    assert set(metrics) == {"test_loss", "test_acc", "valid_loss", "valid_acc"}
    # Each set's accuracy is the share of its images the model labels right.
    model.eval()
    with torch.no_grad():
        x = (images.x_valid.float() / 255 - task.mean[0]) / task.std[0]
        right = (model(x).argmax(1) == images.y_valid).float().mean().item()
    assert metrics["valid_acc"] == pytest.approx(right)
    del cfg["train"]["valid_subset"]
    assert set(task.setup(task.load(cfg), ctx).evaluate(model)) == {"test_loss", "test_acc"}
