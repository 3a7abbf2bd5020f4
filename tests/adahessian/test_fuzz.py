"""A fuzzer over the optimizer's inputs (hypothesis): hyperparameters in every form and at the
extremes (floats, ints, bools, strings, None, NaN, inf, 0-d and 1-element tensors), handed to the
constructor, written into a parameter group, or given as a step's Hessian estimate; state_dicts
mutated field by field. The invariant: the call works (and the parameters stay finite, where the
inputs were finite and moderate), or it raises a ValueError / TypeError / RuntimeError and
nothing changed: parameters, gradients, optimizer state, counters, the probe generator and the
global RNG. A bounded run is part of ``make test``; ``-m slow`` runs a longer one."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from adahessian import AdaHessian

F64 = torch.float64
REFUSED = (ValueError, TypeError, RuntimeError)
KEYS = ("lr", "betas", "eps", "weight_decay", "hessian_power", "block_size", "update_clip")

FAST = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
SLOW = settings(
    max_examples=1500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0.0, -0.0, 1e-300, 1e39, 1e308, -1.0, 1.0, 0.999999, 2.0**-24]),
)
scalars = st.one_of(
    floats,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.booleans(),
    st.none(),
    st.text(max_size=4),
    floats.map(lambda v: torch.tensor(v, dtype=F64)),
    floats.map(lambda v: torch.tensor([v], dtype=torch.float32)),
    st.just(torch.tensor([0.1, 0.2])),
    st.just(torch.tensor(1)),
)
values: dict[str, Any] = {
    "lr": scalars,
    "betas": st.one_of(st.tuples(scalars, scalars), st.lists(scalars, max_size=3), scalars),
    "eps": scalars,
    "weight_decay": scalars,
    "hessian_power": scalars,
    "block_size": st.one_of(st.integers(min_value=-3, max_value=40), scalars),
    "update_clip": scalars,
}
settings_of = st.dictionaries(
    st.sampled_from(KEYS), st.deferred(lambda: st.sampled_from(KEYS)).flatmap(lambda k: values[k])
)


def model_and_grads() -> tuple[nn.Module, list[nn.Parameter]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    params = list(model.parameters())
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 3, generator=g, dtype=F64)
    model(x).square().mean().backward(create_graph=True)
    return model, params


def snapshot(params: list[nn.Parameter], opt: AdaHessian | None) -> list[Any]:
    taken: list[Any] = [
        [p.detach().clone() for p in params],
        [None if p.grad is None else p.grad.detach().clone() for p in params],
        torch.get_rng_state(),
    ]
    if opt is not None:
        generator = opt._probe_generator().get_state()  # made on first use: before state_dict
        taken += [copy.deepcopy(opt.state_dict()), generator]
    return taken


def same(a: Any, b: Any) -> bool:
    if isinstance(a, Tensor):
        if not (isinstance(b, Tensor) and a.dtype == b.dtype and a.shape == b.shape):
            return False
        if a.is_floating_point():  # NaN written into a group equals itself
            return bool(((a == b) | (a.isnan() & b.isnan())).all())
        return torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (
            isinstance(b, (list, tuple))
            and len(a) == len(b)
            and all(same(x, y) for x, y in zip(a, b, strict=True))
        )
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return bool(a == b)


def moderate(hp: dict[str, Any]) -> bool:
    """Inputs small enough that a step must keep finite parameters finite."""

    def ok(v: Any) -> bool:
        if isinstance(v, Tensor):
            return v.numel() == 1 and bool(torch.isfinite(v).all()) and abs(float(v)) < 1e3
        if isinstance(v, (tuple, list)):
            return all(ok(x) for x in v)
        return isinstance(v, (int, float)) and math.isfinite(v) and abs(v) < 1e3

    return all(ok(v) for v in hp.values())


def refused(call: Callable[[], Any], params: list[nn.Parameter], opt: Any, what: Any) -> bool:
    """Make ``call``; if it raises a clear error, assert that nothing changed and say so."""
    before = snapshot(params, opt)
    try:
        call()
    except REFUSED:
        assert same(snapshot(params, opt), before), f"a refused call changed something: {what}"
        return True
    return False


def check_construct_and_step(hp: dict[str, Any]) -> None:
    _, params = model_and_grads()
    made: list[AdaHessian] = []
    if refused(lambda: made.append(AdaHessian(params, seed=0, **hp)), params, None, hp):
        return
    if refused(made[0].step, params, made[0], hp):
        return
    if moderate(hp):
        assert all(torch.isfinite(p).all() for p in params), f"non-finite parameters: {hp}"


def check_group_edit_and_step(hp: dict[str, Any]) -> None:
    _, params = model_and_grads()
    opt = AdaHessian(params, lr=0.05, seed=0)
    opt.param_groups[0].update(hp)  # as a scheduler or a user would, between steps
    refused(opt.step, params, opt, hp)


@FAST
@given(settings_of)
def test_fuzz_constructor_and_step(hp: dict[str, Any]) -> None:
    check_construct_and_step(hp)


@FAST
@given(settings_of)
def test_fuzz_group_edits_between_steps(hp: dict[str, Any]) -> None:
    check_group_edit_and_step(hp)


estimates = st.lists(
    st.one_of(
        floats.map(lambda v: ("full", v)),
        st.sampled_from([("bool", 0), ("int", 0), ("shape", 0), ("none", 0), ("complex", 0)]),
    ),
    min_size=0,
    max_size=5,
)


def build_estimate(params: list[nn.Parameter], spec: list[tuple[str, Any]]) -> list[Any]:
    out: list[Any] = []
    for (kind, v), p in zip(spec, params * 2, strict=False):
        if kind == "full":
            out.append(torch.full_like(p, v))
        elif kind == "bool":
            out.append(torch.ones_like(p, dtype=torch.bool))
        elif kind == "int":
            out.append(torch.ones_like(p, dtype=torch.int64))
        elif kind == "shape":
            out.append(torch.ones(7, dtype=F64))
        elif kind == "complex":
            out.append(torch.ones_like(p, dtype=torch.complex128))
        else:
            out.append(None)
    return out


@FAST
@given(estimates)
def test_fuzz_hessian_estimates_given_to_the_step(spec: list[tuple[str, Any]]) -> None:
    _, params = model_and_grads()
    opt = AdaHessian(params, lr=0.05, seed=0)
    hessian = build_estimate(params, spec)
    if not refused(lambda: opt.step(hessian=hessian), params, opt, spec):
        assert all(torch.isfinite(p).all() for p in params)


@FAST
@given(estimates)
def test_fuzz_estimates_handed_to_add_hessian_estimate(spec: list[tuple[str, Any]]) -> None:
    _, params = model_and_grads()
    for p in params:  # an estimate from elsewhere: the gradients carry no graph
        p.grad = p.grad.detach()
    opt = AdaHessian(params, lr=0.05, seed=0)
    opt.hessian_probes()
    if refused(lambda: opt.add_hessian_estimate(build_estimate(params, spec)), params, opt, spec):
        assert opt.hessian_estimate() is None
        return
    if not refused(opt.step, params, opt, spec):
        assert all(torch.isfinite(p).all() for p in params)


state_fields = st.sampled_from(
    ["step", "hessian_step", "exp_avg", "exp_hessian_diag_sq", "steps", "hessian_updates",
     "seed", "probe_scale", "lr", "betas", "missing-entry"]
)  # fmt: skip


@FAST
@given(state_fields, scalars)
def test_fuzz_state_dicts_mutated_field_by_field(field: str, value: Any) -> None:
    _, params = model_and_grads()
    opt = AdaHessian(params, lr=0.05, seed=0)
    opt.step()
    saved = copy.deepcopy(opt.state_dict())
    if field in ("step", "hessian_step", "exp_avg", "exp_hessian_diag_sq"):
        saved["state"][0][field] = value
    elif field in ("lr", "betas"):
        saved["param_groups"][0][field] = value
    elif field == "missing-entry":
        del saved["state"][0]["exp_avg"]
    else:
        saved["adahessian"][field] = value
    refused(lambda: opt.load_state_dict(saved), params, opt, field)


@pytest.mark.slow
@SLOW
@given(settings_of)
def test_fuzz_constructor_and_step_long(hp: dict[str, Any]) -> None:
    check_construct_and_step(hp)


@pytest.mark.slow
@SLOW
@given(settings_of)
def test_fuzz_group_edits_between_steps_long(hp: dict[str, Any]) -> None:
    check_group_edit_and_step(hp)
