"""The CIFAR ResNets: structure and parameter counts of He et al. (2016)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adahessian_bench.models import CifarResNet, resnet20, resnet32
from adahessian_bench.task_images import ImageTask
from adahessian_bench.tasks import TASKS


@pytest.mark.parametrize(
    ("make", "n_blocks", "n_params"),
    [(resnet20, 9, 272_474), (resnet32, 15, 466_906)],  # 0.27 M and 0.46 M in the paper
)
def test_resnet_structure(make, n_blocks: int, n_params: int) -> None:
    model = make(in_channels=3)
    assert sum(p.numel() for p in model.parameters()) == n_params
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    shortcuts = [c for c in convs if c.kernel_size == (1, 1)]
    assert len(convs) == 1 + 2 * n_blocks + 2  # stem, two per block, two 1x1 shortcuts
    assert [(c.in_channels, c.out_channels, c.stride) for c in shortcuts] == [
        (16, 32, (2, 2)),
        (32, 64, (2, 2)),
    ]
    assert {c.out_channels for c in convs} == {16, 32, 64}
    out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)


def test_one_channel_model_and_kaiming_init() -> None:
    torch.manual_seed(0)
    model = resnet20(in_channels=1)
    assert model(torch.randn(4, 1, 32, 32)).shape == (4, 10)
    w = model.layers[0].conv1.weight  # 16 x 16 x 3 x 3, fan_out = 144
    assert abs(w.std().item() - (2 / 144) ** 0.5) < 0.02
    bn = model.layers[0].bn1
    assert torch.equal(bn.weight, torch.ones(16)) and torch.equal(bn.bias, torch.zeros(16))


def test_depth_must_be_6n_plus_2() -> None:
    with pytest.raises(ValueError, match="6n\\+2"):
        CifarResNet(depth=21)


def test_image_tasks_build_their_models() -> None:
    for task in (t for t in TASKS.values() if isinstance(t, ImageTask)):
        model = task.model()
        assert model(torch.zeros(1, task.in_channels, 32, 32)).shape == (1, 10)
        assert len(task.mean) == len(task.std) == task.in_channels
