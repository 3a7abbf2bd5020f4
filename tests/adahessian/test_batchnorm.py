"""The closed-form batch-norm double backward against PyTorch's own, in float64."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from adahessian import AdaHessian
from adahessian.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, use_fast_batchnorm
from adahessian.batchnorm import batch_norm_train as bn_train

F64 = torch.float64


# These tensors are tiny: one intra-op thread is faster (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


# (stock class, fast class, input shape)
LAYOUTS = [
    (nn.BatchNorm1d, BatchNorm1d, (7, 3)),
    (nn.BatchNorm1d, BatchNorm1d, (4, 3, 5)),
    (nn.BatchNorm2d, BatchNorm2d, (4, 3, 3, 4)),
    (nn.BatchNorm3d, BatchNorm3d, (3, 2, 2, 3, 2)),
]
SETTINGS = [
    {},
    {"affine": False},
    {"momentum": None},
    {"track_running_stats": False},
    {"eps": 1e-2, "momentum": 0.3},
]


def _pair(stock_cls: type[nn.Module], c: int, **kw: object) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    stock = stock_cls(c, dtype=F64, **kw)
    if stock.affine:
        with torch.no_grad():
            stock.weight.uniform_(0.5, 1.5)
            stock.bias.uniform_(-0.5, 0.5)
    return stock, use_fast_batchnorm(copy.deepcopy(stock))


def _grad_and_hvp(
    model: nn.Module, x: Tensor, probe_seed: int
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    """Output, gradient of a nonlinear loss w.r.t. (x, params), and the Hessian-vector
    product with a fixed random vector, by double backward."""
    x = x.clone().requires_grad_(True)
    inputs = [x, *model.parameters()]
    out = model(x)
    weights = torch.linspace(-1, 1, out.numel(), dtype=F64).view_as(out)
    loss = (out * weights).sum() + out.tanh().pow(2).sum()  # the output Hessian is not zero
    grads = torch.autograd.grad(loss, inputs, create_graph=True)
    gen = torch.Generator().manual_seed(probe_seed)
    vs = [torch.randn(t.shape, generator=gen, dtype=F64) for t in inputs]
    hvps = torch.autograd.grad(grads, inputs, vs)
    return out.detach(), [g.detach() for g in grads], list(hvps)


@pytest.mark.parametrize("settings", SETTINGS, ids=lambda s: ",".join(s) or "default")
@pytest.mark.parametrize(
    "stock_cls, fast_cls, shape",
    LAYOUTS,
    ids=[f"{s.__name__}-{'x'.join(map(str, shape))}" for s, _, shape in LAYOUTS],
)
def test_matches_stock_batchnorm(
    stock_cls: type[nn.Module], fast_cls: type[nn.Module], shape: tuple[int, ...], settings: dict
) -> None:
    stock, fast = _pair(stock_cls, shape[1], **settings)
    assert type(fast) is fast_cls
    torch.manual_seed(1)
    for step in range(2):  # two steps: running statistics and num_batches_tracked evolve
        x = torch.randn(shape, dtype=F64) * 2 + 0.5
        out_s, grads_s, hvps_s = _grad_and_hvp(stock, x, probe_seed=step)
        out_f, grads_f, hvps_f = _grad_and_hvp(fast, x, probe_seed=step)
        torch.testing.assert_close(out_f, out_s, rtol=0, atol=0)
        for g_f, g_s in zip(grads_f, grads_s, strict=True):
            torch.testing.assert_close(g_f, g_s, rtol=1e-12, atol=1e-12)
        for h_f, h_s in zip(hvps_f, hvps_s, strict=True):
            torch.testing.assert_close(h_f, h_s, rtol=1e-10, atol=1e-10)
        for (name, b_f), b_s in zip(fast.named_buffers(), stock.buffers(), strict=True):
            torch.testing.assert_close(b_f, b_s, rtol=0, atol=0, msg=name)
    # eval mode: the stock operator with the running statistics
    stock.eval()
    fast.eval()
    x = torch.randn(shape, dtype=F64)
    torch.testing.assert_close(fast(x), stock(x), rtol=0, atol=0)


@pytest.mark.parametrize("affine", [True, False])
def test_gradgradcheck(affine: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 2, 2, 2, generator=gen, dtype=F64, requires_grad=True)
    w = (torch.rand(2, generator=gen, dtype=F64) + 0.5).requires_grad_(True)
    b = torch.randn(2, generator=gen, dtype=F64, requires_grad=True)

    def fn(*t: Tensor) -> Tensor:
        return bn_train(t[0], *(t[1:] if affine else (None, None)), eps=1e-3)

    inputs = (x, w, b) if affine else (x,)
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


def test_only_some_inputs_need_gradients() -> None:
    """The double backward skips outputs nobody asked for and gives the same values."""
    x = torch.randn(5, 3, 4, dtype=F64)
    w = torch.rand(3, dtype=F64) + 0.5
    b = torch.randn(3, dtype=F64)
    results = []
    for fn in (bn_train, lambda x, w, b: nn.functional.batch_norm(x, None, None, w, b, True)):
        wr = w.clone().requires_grad_(True)
        out = fn(x, wr, b)
        (g,) = torch.autograd.grad(out.pow(3).sum(), wr, create_graph=True)
        (h,) = torch.autograd.grad(g, wr, torch.ones_like(g))
        results.append((g.detach(), h))
    torch.testing.assert_close(results[0], results[1], rtol=1e-12, atol=1e-12)


def test_third_derivatives_are_refused() -> None:
    x = torch.randn(4, 2, dtype=F64, requires_grad=True)
    out = bn_train(x, None, None)
    (g,) = torch.autograd.grad(out.pow(3).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="third derivatives"):
        torch.autograd.grad(g.pow(2).sum(), x, create_graph=True)


def test_use_fast_batchnorm_switches_in_place() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3),
        nn.BatchNorm2d(3, eps=1e-3, momentum=0.2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(12, 4),
        nn.BatchNorm1d(4, affine=False, track_running_stats=False),
    ).double()
    bn = model[1]
    params_before = {n: p for n, p in model.named_parameters()}
    opt_params = list(model.parameters())
    assert use_fast_batchnorm(model) is model
    assert type(model[1]) is BatchNorm2d and isinstance(model[1], nn.BatchNorm2d)
    assert type(model[5]) is BatchNorm1d
    assert model[1] is bn and (bn.eps, bn.momentum, bn.affine) == (1e-3, 0.2, True)
    assert (model[5].affine, model[5].track_running_stats) == (False, False)
    assert all(p is params_before[n] for n, p in model.named_parameters())
    assert all(p is q for p, q in zip(opt_params, model.parameters(), strict=True))
    assert use_fast_batchnorm(model) is model and type(model[1]) is BatchNorm2d  # idempotent
    single = nn.BatchNorm3d(2)
    assert type(use_fast_batchnorm(single)) is BatchNorm3d
    sync = nn.SyncBatchNorm(2)
    assert type(use_fast_batchnorm(sync)) is nn.SyncBatchNorm  # left alone


def test_adahessian_steps_are_the_same() -> None:
    torch.manual_seed(0)
    stock = nn.Sequential(
        nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Tanh(), nn.Flatten(), nn.Linear(36, 3)
    ).double()
    fast = use_fast_batchnorm(copy.deepcopy(stock))
    x = torch.randn(8, 2, 5, 5, dtype=F64)
    y = torch.randint(0, 3, (8,))
    opts = [AdaHessian(m.parameters(), lr=0.05, seed=1, n_samples=2) for m in (stock, fast)]
    for _ in range(3):
        for model, opt in zip((stock, fast), opts, strict=True):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward(create_graph=True)
            opt.step()
    for p, q in zip(stock.parameters(), fast.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)
