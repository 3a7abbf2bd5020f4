"""Forward-over-reverse and batched reverse-over-reverse Hutchinson estimates against the loop of
plain double backwards (:func:`hutchinson_diagonal`) with the same probes, in float64."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from adahessian import (
    AdaHessian,
    ForwardOverReverseError,
    batched_hutchinson_diagonal,
    forward_hutchinson,
    hutchinson_diagonal,
)

LossFn = Callable[[Tensor], Tensor]


# These tensors are tiny: one intra-op thread is faster (see conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def _model(name: str) -> tuple[nn.Module, Tensor, LossFn]:
    torch.manual_seed(0)
    y = torch.randint(0, 3, (6,))
    if name == "conv_bn":
        model: nn.Module = nn.Sequential(
            nn.Conv2d(2, 3, 3),
            nn.BatchNorm2d(3),
            nn.Tanh(),
            nn.Conv2d(3, 2, 1),
            nn.BatchNorm2d(2, momentum=None),  # cumulative average: uses num_batches_tracked
            nn.Flatten(),
            nn.Linear(2 * 3 * 3, 3),
        )
        x = torch.randn(6, 2, 5, 5)
    elif name == "linear_bn1d":
        model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3))
        x = torch.randn(6, 4)
    elif name == "layernorm":
        model = nn.Sequential(nn.Linear(4, 5), nn.LayerNorm(5), nn.GELU(), nn.Linear(5, 3))
        x = torch.randn(6, 4)
    else:
        raise KeyError(name)
    model = model.double().train()
    for m in model.modules():  # non-trivial affine parameters and running statistics
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm)):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    x = x.double()
    return model, x, lambda out: F.cross_entropy(out, y)


def _reference(
    model: nn.Module, x: Tensor, loss_fn: LossFn, seed: int, n_samples: int = 1
) -> tuple[Tensor, list[Tensor], list[Tensor]]:
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn(model(x))
    grads = torch.autograd.grad(loss, params, create_graph=True)
    gen = torch.Generator().manual_seed(seed)
    diag = hutchinson_diagonal(grads, params, n_samples=n_samples, generator=gen)
    return loss.detach(), [g.detach() for g in grads], diag


def _assert_lists_close(a: list[Tensor], b: list[Tensor]) -> None:
    assert len(a) == len(b)
    for s, t in zip(a, b, strict=True):
        torch.testing.assert_close(s, t, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["conv_bn", "linear_bn1d", "layernorm"])
@pytest.mark.parametrize("n_samples", [1, 3])
def test_forward_over_reverse_equals_reverse_over_reverse(name: str, n_samples: int) -> None:
    model, x, loss_fn = _model(name)
    ref_model = copy.deepcopy(model)
    res = forward_hutchinson(
        model, loss_fn, x, n_samples=n_samples, generator=torch.Generator().manual_seed(7)
    )
    loss, grads, diag = _reference(ref_model, x, loss_fn, seed=7, n_samples=n_samples)
    torch.testing.assert_close(res.loss, loss, rtol=1e-12, atol=1e-12)
    _assert_lists_close(res.grads, grads)
    _assert_lists_close(res.diagonal, diag)
    # running statistics exactly as after one ordinary training-mode forward
    for (n, b), (_, rb) in zip(model.named_buffers(), ref_model.named_buffers(), strict=True):
        assert b.dtype == rb.dtype, n
        torch.testing.assert_close(b, rb, rtol=0, atol=0, msg=n)
    assert all(p.grad is None for p in model.parameters())


def test_several_probes_are_the_mean_of_single_probe_estimates() -> None:
    model, x, loss_fn = _model("conv_bn")
    gen = torch.Generator().manual_seed(3)
    singles = [
        forward_hutchinson(copy.deepcopy(model), loss_fn, x, generator=gen).diagonal
        for _ in range(4)
    ]
    gen.manual_seed(3)
    both = [
        forward_hutchinson(copy.deepcopy(model), loss_fn, x, n_samples=4, generator=gen),
        forward_hutchinson(
            copy.deepcopy(model), loss_fn, x, n_samples=4, generator=gen.manual_seed(3),
            vectorize=False,
        ),
    ]  # fmt: skip
    mean = [torch.stack(ds).mean(0) for ds in zip(*singles, strict=True)]
    for res in both:
        _assert_lists_close(res.diagonal, mean)
    _assert_lists_close(both[0].grads, both[1].grads)


def test_dropout_sees_one_mask_for_all_probes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.5), nn.Linear(8, 2)).double()
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 2, (5,))

    def loss_fn(out: Tensor) -> Tensor:
        return F.cross_entropy(out, y)

    torch.manual_seed(11)
    loss, grads, diag = _reference(model, x, loss_fn, seed=5, n_samples=3)
    after_ref = torch.rand(1)
    for vectorize in (True, False):
        torch.manual_seed(11)
        gen = torch.Generator().manual_seed(5)
        res = forward_hutchinson(model, loss_fn, x, n_samples=3, generator=gen, vectorize=vectorize)
        torch.testing.assert_close(res.loss, loss)
        _assert_lists_close(res.grads, grads)
        _assert_lists_close(res.diagonal, diag)
        torch.testing.assert_close(torch.rand(1), after_ref)  # the RNG advanced as one forward


def test_frozen_parameters_are_constants() -> None:
    model, x, loss_fn = _model("linear_bn1d")
    model[0].weight.requires_grad_(False)
    ref_model = copy.deepcopy(model)
    res = forward_hutchinson(model, loss_fn, x, generator=torch.Generator().manual_seed(1))
    _, grads, diag = _reference(ref_model, x, loss_fn, seed=1)
    assert len(res.grads) == len(res.diagonal) == len(list(model.parameters())) - 1
    _assert_lists_close(res.grads, grads)
    _assert_lists_close(res.diagonal, diag)


def test_drives_the_optimizer_like_the_built_in_path() -> None:
    model, x, loss_fn = _model("conv_bn")
    other = copy.deepcopy(model)
    opt = AdaHessian(model.parameters(), lr=0.05, seed=4)
    opt_fwd = AdaHessian(other.parameters(), lr=0.05, seed=99)  # its own generator is unused
    gen = torch.Generator().manual_seed(4)  # what AdaHessian(seed=4) draws from
    for _ in range(3):
        opt.zero_grad()
        loss_fn(model(x)).backward(create_graph=True)
        opt.step()
        res = forward_hutchinson(other, loss_fn, x, generator=gen)
        for p, g in zip(other.parameters(), res.grads, strict=True):
            p.grad = g
        opt_fwd.step(hessian=res.diagonal)
    for p, q in zip(model.parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-11)
    for b, c in zip(model.buffers(), other.buffers(), strict=True):
        torch.testing.assert_close(b, c, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "loss_name, loss_fn",
    [
        ("F.mse_loss", lambda out, y: F.mse_loss(out, y)),
        ("F.huber_loss", lambda out, y: F.huber_loss(out, y)),
    ],
)
def test_unsupported_losses_raise_a_clear_error(
    loss_name: str, loss_fn: Callable[[Tensor, Tensor], Tensor]
) -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 2, dtype=torch.float64)
    model.append(nn.BatchNorm1d(2).double())
    before = [b.clone() for b in model.buffers()]
    gen = torch.Generator().manual_seed(0)
    gen_state = gen.get_state()
    with pytest.raises(ForwardOverReverseError, match="reverse-over-reverse") as info:
        forward_hutchinson(model, lambda out: loss_fn(out, y), x, generator=gen)
    assert torch.equal(gen.get_state(), gen_state)
    assert "loss.backward(create_graph" in str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers(), strict=True))
    # the same loss written out by hand goes through
    res = forward_hutchinson(model, lambda out: ((out - y) ** 2).mean(), x)
    assert len(res.diagonal) == 8


def test_user_errors_are_not_relabelled() -> None:
    model = nn.Linear(3, 2).double()
    with pytest.raises(RuntimeError) as info:
        forward_hutchinson(model, lambda out: out.sum(), torch.randn(5, 4, dtype=torch.float64))
    assert not isinstance(info.value, ForwardOverReverseError)


def test_bad_input() -> None:
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="n_samples"):
        forward_hutchinson(model, lambda out: out.sum(), torch.randn(2, 3), n_samples=0)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad"):
        forward_hutchinson(model, lambda out: out.sum(), torch.randn(2, 3))


# ---------------------------------------------------------------- batched reverse-over-reverse


@pytest.mark.parametrize("name", ["conv_bn", "layernorm"])
def test_batched_double_backward_equals_the_loop(name: str) -> None:
    model, x, loss_fn = _model(name)
    params = list(model.parameters())
    grads = torch.autograd.grad(loss_fn(model(x)), params, create_graph=True)
    gen = torch.Generator().manual_seed(2)
    loop = hutchinson_diagonal(grads, params, n_samples=4, generator=gen, retain_graph=True)
    after_loop = gen.get_state()
    gen.manual_seed(2)
    batched = batched_hutchinson_diagonal(grads, params, n_samples=4, generator=gen)
    _assert_lists_close(batched, loop)
    assert torch.equal(gen.get_state(), after_loop)


def test_batched_double_backward_skips_constant_gradients() -> None:
    a = torch.tensor([1.0, 2.0], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
    (ga,) = torch.autograd.grad((a**3).sum(), a, create_graph=True)
    est = batched_hutchinson_diagonal([ga, torch.ones(1)], [a, b], n_samples=2)
    torch.testing.assert_close(est[0], 6 * a.detach())
    torch.testing.assert_close(est[1], torch.zeros(1, dtype=torch.float64))
    with pytest.raises(ValueError, match="graph"):
        batched_hutchinson_diagonal([ga.detach()], [a])
    with pytest.raises(ValueError, match="n_samples"):
        batched_hutchinson_diagonal([ga], [a], n_samples=0)


def test_batched_double_backward_names_the_loop_when_vmap_fails() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(64, 2))
    model = model.double()
    x = torch.randn(5, 2, 6, 6, dtype=torch.float64)
    params = list(model.parameters())
    grads = torch.autograd.grad(model(x).pow(2).mean(), params, create_graph=True)
    with pytest.raises(RuntimeError, match="hutchinson_diagonal"):
        batched_hutchinson_diagonal(grads, params, n_samples=2)
