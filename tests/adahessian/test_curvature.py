"""The curvature sources of a step, on their own: on a separable quadratic (Hessian diag(a), so
every probe is exact) all three give diag(a) for the parameters with gradients, in order."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from adahessian import curvature
from adahessian.hutchinson import hutchinson_diagonal, rademacher

F64 = torch.float64


def problem() -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
    g = torch.Generator().manual_seed(0)
    a = [torch.rand(s, generator=g, dtype=F64) + 0.5 for s in [(3, 4), (5,), (2, 1, 3)]]
    params = [torch.randn_like(ai).requires_grad_(True) for ai in a]
    loss = sum((ai * p * p).sum() / 2 for ai, p in zip(a, params, strict=True))
    grads = list(torch.autograd.grad(loss, params, create_graph=True))  # type: ignore[arg-type]
    return a, params, grads


def test_every_source_gives_the_exact_diagonal_of_the_parameters_asked_for():
    a, params, grads = problem()
    wanted = [params[2], params[0]]  # a subset, in another order
    wanted_grads = [grads[2], grads[0]]
    probes = [rademacher(params, generator=torch.Generator().manual_seed(1))]
    total = hutchinson_diagonal(grads, params, probes=probes, retain_graph=True)
    sources = [
        curvature.Given([a[2], a[0]], finite=True),
        curvature.Accumulated(params, total),
        curvature.OnGradientGraph(params, torch.Generator().manual_seed(1), 2, 0.25, True, 1),
    ]
    for source in sources:
        # (an accumulated estimate comes with gradients that carry no graph: opt.backward's)
        given = [g.detach() for g in wanted_grads] if source is sources[1] else wanted_grads
        got = source.estimate(wanted, given)
        assert [torch.equal(x, y) for x, y in zip(got, [a[2], a[0]], strict=True)] == [True] * 2
    assert [s.from_loss for s in sources] == [False, True, True]


def test_a_parameter_outside_the_probed_ones_gets_zero_curvature():
    _, params, grads = problem()
    stranger = torch.ones(2, dtype=F64)
    total = [torch.full_like(p, 7.0) for p in params]
    got = curvature.Accumulated(params, total).estimate(
        [stranger, params[1]], [stranger, grads[1].detach()]
    )
    assert torch.equal(got[0], torch.zeros(2, dtype=F64)) and torch.equal(got[1], total[1])


def test_on_gradient_graph_rewinds_its_generator_when_the_product_fails():
    _, params, grads = problem()
    torch.autograd.grad(sum(g.sum() for g in grads), params)  # frees the graph
    generator = torch.Generator().manual_seed(3)
    before = generator.get_state()
    source = curvature.OnGradientGraph(params, generator, 1, 1.0, True, 4)
    with pytest.raises(RuntimeError, match="second time"):
        source.estimate(params, grads)
    assert torch.equal(generator.get_state(), before)


@pytest.mark.parametrize(("graph_kept", "zero"), [(True, True), (False, False), (None, False)])
def test_constant_gradients_are_zero_curvature_only_when_the_graph_was_kept(graph_kept, zero):
    _, params, grads = problem()
    constant = [g.detach() for g in grads]
    source = curvature.OnGradientGraph(params, torch.Generator(), 1, 1.0, graph_kept, 4)
    if zero:
        assert all(not e.any() for e in source.estimate(params, constant))
    else:
        with pytest.raises(RuntimeError, match=r"step 4 is a Hessian step .* create_graph"):
            source.estimate(params, constant)


def test_an_outside_estimator_with_the_step_probes_gives_the_eager_step():
    """hessian_probes() draws what the step would draw; an estimate taken with them and handed
    over with add_hessian_estimate() makes the same step as loss.backward(create_graph=True)."""
    from adahessian import AdaHessian

    runs = []
    for outside in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
        model.double()
        opt = AdaHessian(model.parameters(), lr=0.1, seed=3, n_samples=2, update_interval=2)
        g = torch.Generator().manual_seed(0)
        for _ in range(5):
            x = torch.randn(8, 4, generator=g, dtype=F64)
            loss = model(x).pow(2).mean()
            opt.zero_grad()
            if outside and opt.hessian_due:
                params, probes = opt.hessian_probes()
                assert opt.hessian_probes()[1] is probes  # the same probes until the step
                grads = torch.autograd.grad(loss, params, create_graph=True)
                opt.add_hessian_estimate(hutchinson_diagonal(grads, params, probes=probes))
                for p, gr in zip(params, grads, strict=True):
                    p.grad = gr.detach()
            else:
                loss.backward(create_graph=opt.hessian_due)
            opt.step()
        runs.append([p.detach() for p in model.parameters()])
    for p, q in zip(*runs, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15)


def test_outside_estimates_are_checked():
    from adahessian import AdaHessian

    p = torch.nn.Parameter(torch.ones(3, dtype=F64))
    opt = AdaHessian([p], update_interval=2, seed=0)
    with pytest.raises(RuntimeError, match="call hessian_probes\\(\\) first"):
        opt.add_hessian_estimate([torch.ones(3)])
    opt.hessian_probes()
    with pytest.raises(ValueError, match=r"estimate\[0\] has shape \(2,\) but its parameter has"):
        opt.add_hessian_estimate([torch.ones(2)])
    with pytest.raises(ValueError, match=r"one tensor per parameter of hessian_probes\(\) \(1\)"):
        opt.add_hessian_estimate([torch.ones(3), torch.ones(3)])
    opt.zero_grad()  # drops the step's probes and estimate
    with pytest.raises(RuntimeError, match="call hessian_probes\\(\\) first"):
        opt.add_hessian_estimate([torch.ones(3)])
    (p * p).sum().backward(create_graph=True)
    opt.step()
    with pytest.raises(RuntimeError, match=r"for Hessian steps: check opt\.hessian_due"):
        opt.hessian_probes()
