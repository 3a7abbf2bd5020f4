"""A small real-data learning test: scikit-learn's bundled handwritten digits (1,797 8x8 images)."""

import pytest
import torch
from torch import nn

from adahessian import AdaHessian

datasets = pytest.importorskip("sklearn.datasets", reason="scikit-learn ships the digits data")


def test_trains_a_small_cnn_on_digits_to_high_accuracy():
    X, y = datasets.load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(y)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(X), generator=g)
    train, test = perm[:1400], perm[1400:]
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(8 * 16, 10),
    )  # fmt: skip
    opt = AdaHessian(model.parameters(), lr=0.15, seed=0)
    with torch.no_grad():
        chance = (model(X[test]).argmax(1) == y[test]).float().mean().item()
    for _ in range(8):
        for idx in train[torch.randperm(len(train), generator=g)].split(64):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
            loss.backward(create_graph=opt.hessian_due)
            opt.step()
    with torch.no_grad():
        accuracy = (model(X[test]).argmax(1) == y[test]).float().mean().item()
    assert chance < 0.3
    assert accuracy > 0.93, accuracy
