"""The generic ``torch.optim`` contract (the checks of PyTorch's ``TestOptimRenewed`` that apply to
any optimizer), for AdaHessian: copies carry every attribute, tensor lr, state_dict round trips
(also through ``torch.load(weights_only=True)`` and from older state_dicts), hooks, zero and None
gradients, non-contiguous parameters, LR schedulers, printing.

The loss is a separable quadratic, whose Hessian diagonal every Rademacher probe gives exactly, so
that trajectories can be compared bit for bit whatever the probes."""

from __future__ import annotations

import copy
import gc
import io
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from adahessian import AdaHessian

F64 = torch.float64


def quadratic(seed: int = 0) -> tuple[list[Tensor], list[Tensor]]:
    """Curvatures and starting points of three parameters (a matrix, a vector, a kernel)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 3), (5,), (2, 2, 3, 3)]
    a = [torch.rand(s, generator=g, dtype=F64) + 0.1 for s in shapes]
    p0 = [torch.randn(s, generator=g, dtype=F64) for s in shapes]
    return a, p0


def loss_of(params: list[Tensor], a: list[Tensor]) -> Tensor:
    return sum(((ai * p * p).sum() / 2 + p.sum() / 3 for ai, p in zip(a, params, strict=True)))  # type: ignore[return-value]


def closure_for(opt: AdaHessian, params: list[Tensor], a: list[Tensor]) -> Callable[[], Tensor]:
    def closure() -> Tensor:
        opt.zero_grad()
        loss = loss_of(params, a)
        loss.backward(create_graph=opt.hessian_due)
        return loss

    return closure


def setup(**kwargs: Any) -> tuple[list[Tensor], AdaHessian, list[Tensor]]:
    a, p0 = quadratic()
    params = [p.clone().requires_grad_(True) for p in p0]
    opt = AdaHessian(params, **{"lr": 0.05, "seed": 0, "update_interval": 2, **kwargs})
    return params, opt, a


def run(params: list[Tensor], opt: AdaHessian, a: list[Tensor], steps: int) -> None:
    for _ in range(steps):
        opt.step(closure_for(opt, params, a))


def params_of(opt: AdaHessian) -> list[Tensor]:
    return [p for group in opt.param_groups for p in group["params"]]


def assert_lockstep(first: AdaHessian, second: AdaHessian, a: list[Tensor], steps: int = 5):
    """Both optimizers, each on its own parameters, take the same steps."""
    for _ in range(steps):
        for opt in (first, second):
            opt.step(closure_for(opt, params_of(opt), a))
        for p, q in zip(params_of(first), params_of(second), strict=True):
            assert p is not q and torch.equal(p, q)


def public_attributes(opt: AdaHessian) -> set[str]:
    return {k for k in opt.__dict__ if not k.startswith("_")}


# ----------------------------------------------------------------------------- copies


@pytest.mark.parametrize(
    "make_copy",
    [
        copy.deepcopy,
        lambda opt: pickle.loads(pickle.dumps(opt)),
        lambda opt: _torch_save_load(opt),
    ],
    ids=["deepcopy", "pickle", "torch-save"],
)
def test_a_copy_carries_every_attribute_and_continues_in_lockstep(make_copy):
    params, opt, a = setup(n_samples=2)
    run(params, opt, a, 3)  # the next step is a plain step, then a Hessian step
    twin = make_copy(opt)
    assert public_attributes(twin) == public_attributes(opt)
    for name in ("update_interval", "n_samples", "seed", "hessian_due", "skipped_steps"):
        assert getattr(twin, name) == getattr(opt, name), name
    assert torch.equal(twin._probe_generator().get_state(), opt._probe_generator().get_state())
    assert_lockstep(opt, twin, a)


def _torch_save_load(opt: AdaHessian) -> AdaHessian:
    buffer = io.BytesIO()
    torch.save(opt, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)  # a whole object, from this test's own bytes


def test_a_copy_detects_a_linear_loss_on_its_own_parameters():
    _, opt, _ = setup()
    twin = copy.deepcopy(opt)
    twin_params = params_of(twin)
    sum((p * 2).sum() for p in twin_params).backward(create_graph=True)  # linear: no curvature
    twin.step()
    assert all(p.grad is not None for p in twin_params)


def test_an_optimizer_with_a_process_group_refuses_to_be_copied():
    params, _, _ = setup()
    opt = AdaHessian(params, seed=0, process_group=object())
    with pytest.raises(TypeError, match=r"process_group cannot be copied or pickled.*state_dict"):
        copy.deepcopy(opt)


# ----------------------------------------------------------------------------- state_dict


def test_state_dict_loads_through_torch_load_weights_only():
    params, opt, a = setup(lr=torch.tensor(0.05, dtype=F64))
    run(params, opt, a, 3)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    twin_params = [p.detach().clone().requires_grad_(True) for p in params]
    twin = AdaHessian(twin_params, lr=0.5, seed=9)
    twin.load_state_dict(state)
    assert_lockstep(opt, twin, a)


def test_an_older_state_dict_without_later_keys_still_loads():
    params, opt, a = setup()
    run(params, opt, a, 3)
    old = copy.deepcopy(opt.state_dict())
    for group in old["param_groups"]:  # keys added after the first release
        del group["block_size"], group["spatial_average"], group["foreach"], group["update_clip"]
    for key in ("skipped_steps", "probe_scale", "probe_scale_growth", "hessian_warmup"):
        del old["adahessian"][key]
    twin = AdaHessian([p.detach().clone().requires_grad_(True) for p in params], seed=1)
    twin.load_state_dict(old)
    assert twin.param_groups[0]["block_size"] == 1
    assert twin.param_groups[0]["spatial_average"] is True
    assert twin.probe_scale == 1.0
    assert_lockstep(opt, twin, a)


def test_state_dict_of_float16_parameters_keeps_float32_moments_through_a_round_trip():
    p = torch.nn.Parameter(torch.randn(6, dtype=torch.float16))
    opt = AdaHessian([p], seed=0)
    (p.float() ** 2).sum().backward(create_graph=True)
    opt.step()
    twin = AdaHessian([torch.nn.Parameter(p.detach().clone())], seed=0)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    for name in ("exp_avg", "exp_hessian_diag_sq"):
        moment = next(iter(twin.state.values()))[name]
        assert moment.dtype == torch.float32
        assert torch.equal(moment, opt.state[p][name])


# ----------------------------------------------------------------------------- lr as a tensor


def test_tensor_lr_equals_float_lr_also_under_a_scheduler():
    runs = []
    for lr in (0.05, torch.tensor(0.05, dtype=F64)):
        params, opt, a = setup(lr=lr)
        scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        for _ in range(6):
            opt.step(closure_for(opt, params, a))
            scheduler.step()
        runs.append(params)
        assert isinstance(opt.param_groups[0]["lr"], type(lr))  # the scheduler kept its type
    for p, q in zip(*runs, strict=True):
        assert torch.equal(p, q)


def test_tensor_lr_changed_in_place_takes_effect():
    lr = torch.tensor(0.05, dtype=F64)
    params, opt, a = setup(lr=lr)
    reference, ref_opt, _ = setup(lr=0.05)
    run(params, opt, a, 2)
    run(reference, ref_opt, a, 2)
    lr.fill_(0.01)
    ref_opt.param_groups[0]["lr"] = 0.01
    run(params, opt, a, 2)
    run(reference, ref_opt, a, 2)
    for p, q in zip(params, reference, strict=True):
        assert torch.equal(p, q)


# ----------------------------------------------------------------------------- hooks


def test_step_and_state_dict_hooks_are_called():
    params, opt, a = setup()
    calls: list[str] = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append("pre"))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append("post"))
    opt.register_state_dict_pre_hook(lambda o: calls.append("sd-pre"))

    def add_note(o: Any, state: dict[str, Any]) -> dict[str, Any]:
        calls.append("sd-post")
        state["note"] = "kept"
        return state

    opt.register_state_dict_post_hook(add_note)
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load-pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load-post"))
    run(params, opt, a, 2)
    state = opt.state_dict()
    opt.load_state_dict(state)
    assert calls == ["pre", "post", "pre", "post", "sd-pre", "sd-post", "load-pre", "load-post"]
    assert state["note"] == "kept"


# ----------------------------------------------------------------------------- gradients


def test_zero_gradients_leave_parameters_unchanged():
    params, opt, _ = setup(weight_decay=0.0)
    before = [p.detach().clone() for p in params]
    for _ in range(3):
        opt.zero_grad()
        # gradient 0 and Hessian 0 (with the graph kept, so the step is a valid Hessian step)
        sum((0 * p * p).sum() for p in params).backward(create_graph=opt.hessian_due)
        opt.step()
    for p, q in zip(params, before, strict=True):
        assert torch.equal(p, q)
    assert all(opt.state[p]["step"] == 3 for p in params)


def test_parameters_with_none_gradients_are_untouched_and_get_no_state():
    params, opt, a = setup()
    before = params[1].detach().clone()
    for _ in range(3):
        opt.zero_grad()
        loss_of(params, a).backward(create_graph=opt.hessian_due)
        params[1].grad = None
        opt.step()
    assert torch.equal(params[1], before)
    assert params[1] not in opt.state
    assert all(opt.state[p]["step"] == 3 for p in (params[0], params[2]))


@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
def test_non_contiguous_parameters_take_the_same_steps_as_contiguous_ones(foreach):
    a, p0 = quadratic()
    trajectories = []
    for contiguous in (True, False):
        params = []
        for p in p0:
            if contiguous or p.dim() < 2:
                params.append(p.clone().requires_grad_(True))
            else:  # the same values, stored transposed
                params.append(p.transpose(0, 1).contiguous().transpose(0, 1).requires_grad_(True))
        assert contiguous or not params[0].is_contiguous()
        opt = AdaHessian(params, lr=0.05, seed=0, foreach=foreach)
        run(params, opt, a, 4)
        trajectories.append(params)
    for p, q in zip(*trajectories, strict=True):
        assert torch.equal(p, q)


def test_step_returns_the_closure_loss_and_the_optimizer_prints():
    params, opt, a = setup()
    expected = loss_of([p.detach() for p in params], a)  # at the parameters before the step
    assert torch.equal(opt.step(closure_for(opt, params, a)).detach(), expected)
    text = repr(opt)
    assert text.startswith("AdaHessian (") and "hessian_power: 1.0" in text and "lr: 0.05" in text


def test_the_paper_step_goes_downhill_on_a_quadratic():
    params, opt, a = setup(update_interval=1)
    start = loss_of(params, a).item()
    run(params, opt, a, 20)
    assert loss_of(params, a).item() < start


def test_the_graph_watch_hooks_go_with_the_optimizer():
    """Each optimizer hooks its parameters to see whether a backward pass kept the graph; the
    hooks are removed when the optimizer is collected, so re-creating optimizers leaks none."""
    p = torch.nn.Parameter(torch.randn(3))
    for _ in range(5):
        opt = AdaHessian([p], seed=0)
    assert len(p._post_accumulate_grad_hooks) == 1
    del opt
    gc.collect()
    assert not p._post_accumulate_grad_hooks


def test_one_cycle_lr_with_cycle_momentum_and_tensor_betas_steps_as_adam_does():
    """OneCycleLR writes a float beta1 next to a tensor beta2; torch's Adam takes it, and so does
    AdaHessian (the both-or-neither rule holds at construction, as in torch), also through a
    state_dict saved in the middle of the cycle."""

    def run(cls: type[torch.optim.Optimizer], **kw: object) -> torch.optim.Optimizer:
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
        opt = cls([p], lr=0.1, betas=(torch.tensor(0.9), torch.tensor(0.999)), **kw)
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=0.1, total_steps=10, cycle_momentum=True
        )
        for _ in range(3):
            opt.zero_grad()
            (p**4).sum().backward(create_graph=cls is AdaHessian)
            opt.step()
            sched.step()
        return opt

    adam = run(torch.optim.Adam)
    opt = run(AdaHessian, seed=0)
    for o in (adam, opt):
        beta1, beta2 = o.param_groups[0]["betas"]
        assert isinstance(beta1, float) and isinstance(beta2, torch.Tensor)
    twin = AdaHessian([torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))], seed=0)
    twin.load_state_dict(opt.state_dict())
    assert twin.param_groups[0]["betas"][0] == opt.param_groups[0]["betas"][0]
    with pytest.raises(ValueError, match="betas must be either both floats or both Tensors"):
        AdaHessian([torch.nn.Parameter(torch.zeros(2))], betas=(0.9, torch.tensor(0.999)))
