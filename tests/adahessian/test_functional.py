"""The functional core's Hessian schedule: which steps take the Hessian, and how many do."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from adahessian import AdaHessian
from adahessian.functional import hessian_due, hessian_steps


@pytest.mark.parametrize("interval", [1, 2, 3, 10])
@pytest.mark.parametrize("warmup", [0, 1, 5])
def test_hessian_steps_counts_the_steps_hessian_due_marks(interval: int, warmup: int) -> None:
    for n in range(40):
        assert hessian_steps(n, interval, warmup) == sum(
            hessian_due(s, interval, warmup) for s in range(n)
        )
    # The warm-up takes the Hessian every step, then every interval-th step from its end.
    due = [s for s in range(warmup + 3 * interval) if hessian_due(s, interval, warmup)]
    assert due == [*range(warmup), *range(warmup, warmup + 3 * interval, interval)]


def test_the_optimizer_follows_the_functional_schedule() -> None:
    p = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = AdaHessian([p], lr=0.01, update_interval=3, hessian_warmup=2)
    for step in range(12):
        assert opt.hessian_due == hessian_due(step, 3, 2)
        opt.zero_grad()
        (p**4).sum().backward(create_graph=opt.hessian_due)
        opt.step()
