"""AdaHessian against the plain reference on exact-Hessian problems; the torch.optim contract."""

from __future__ import annotations

import copy
import io
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from adahessian import AdaHessian
from adahessian.reference import ReferenceAdaHessian

F64 = torch.float64

# ----------------------------------------------------------------------------- separable quadratics
# L(p) = 0.5 * sum(a * p**2) has Hessian diag(a): every Rademacher probe gives v * Hv = a exactly,
# so the optimizer (which estimates it with Hutchinson) must match the reference given a itself.

SHAPES = [(5,), (3, 7), (2, 3, 4), (2, 2, 3, 3), (2, 1, 2, 2, 3)]  # ranks 1 to 5

GROUPS = [
    # (indices into SHAPES, group options)
    ([0, 1], dict(lr=0.05, weight_decay=0.01, hessian_power=0.5, block_size=3)),
    ([2, 3], dict(lr=0.2, hessian_power=1.0, betas=(0.8, 0.99))),
    ([4], dict(lr=0.1, weight_decay=0.1, eps=1e-3, spatial_average=False)),
]


def quadratic(seed: int = 0) -> tuple[list[Tensor], list[Tensor]]:
    g = torch.Generator().manual_seed(seed)
    a = [torch.rand(s, generator=g, dtype=F64) * 2 + 0.1 for s in SHAPES]
    p0 = [torch.randn(s, generator=g, dtype=F64) for s in SHAPES]
    return a, p0


def quadratic_loss(params: list[Tensor], a: list[Tensor]) -> Tensor:
    return sum(0.5 * (ai * p * p).sum() for ai, p in zip(a, params, strict=True))  # type: ignore[return-value]


def make_groups(params: list[Tensor], spec=GROUPS) -> list[dict[str, Any]]:
    return [{"params": [params[i] for i in idx], **opts} for idx, opts in spec]


def run_optimizer(steps: int, spec=GROUPS, schedule=None, **kwargs) -> list[list[Tensor]]:
    a, p0 = quadratic()
    params = [p.clone().requires_grad_(True) for p in p0]
    opt = AdaHessian(make_groups(params, spec), seed=0, **kwargs)
    scheduler = schedule(opt) if schedule else None
    traj = []
    for _ in range(steps):
        opt.zero_grad()
        quadratic_loss(params, a).backward(create_graph=opt.hessian_due)
        opt.step()
        if scheduler:
            scheduler.step()
        traj.append([p.detach().clone() for p in params])
    return traj


def run_reference(steps: int, spec=GROUPS, update_interval=1, lr_at=None) -> list[list[Tensor]]:
    a, p0 = quadratic()
    params = [p.clone() for p in p0]
    ref = ReferenceAdaHessian(make_groups(params, spec), update_interval=update_interval)
    order = [i for idx, _ in spec for i in idx]
    base_lrs = [g.get("lr", ReferenceAdaHessian.defaults["lr"]) for g in ref.groups]
    traj = []
    for t in range(steps):
        if lr_at:
            for group, base in zip(ref.groups, base_lrs, strict=True):
                group["lr"] = base * lr_at(t)
        grads = [a[i] * params[i] for i in order]
        ref.step(grads, [a[i] for i in order] if ref.hessian_due else None)
        traj.append([p.clone() for p in params])
    return traj


def order_of(spec=GROUPS) -> list[int]:
    return [i for idx, _ in spec for i in idx]


def assert_trajectories_close(opt_traj, ref_traj, spec=GROUPS):
    order = order_of(spec)
    for step, (got, want) in enumerate(zip(opt_traj, ref_traj, strict=True)):
        for i, w in zip(order, want, strict=True):
            torch.testing.assert_close(
                got[i], w, rtol=1e-9, atol=1e-12, msg=lambda m, s=step, i=i: f"step {s}, p{i}: {m}"
            )


@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
@pytest.mark.parametrize("update_interval", [1, 3], ids=["every-step", "every-3rd"])
def test_matches_reference_on_quadratics(foreach, update_interval):
    traj = run_optimizer(30, update_interval=update_interval, foreach=foreach)
    assert_trajectories_close(traj, run_reference(30, update_interval=update_interval))
    assert not torch.equal(traj[-1][0], quadratic()[1][0]), "parameters must move"


def test_delayed_hessian_equals_every_step_on_constant_hessian():
    """The beta2 bias correction counts Hessian updates, so with a constant Hessian a Hessian
    estimated every 3rd step gives exactly the every-step trajectory."""
    assert_trajectories_close(run_optimizer(30, update_interval=3), run_reference(30))


def test_raising_update_interval_mid_run_keeps_the_trajectory_on_constant_hessian():
    """A Hessian every step for a warm-up, then every 4th step (``opt.update_interval = 4``): with
    a constant Hessian the trajectory is the every-step one, and the Hessian steps follow the new
    interval."""
    a, p0 = quadratic()
    params = [p.clone().requires_grad_(True) for p in p0]
    opt = AdaHessian(make_groups(params), seed=0)
    traj, due = [], []
    for step in range(20):
        if step == 5:
            opt.update_interval = 4
        due.append(opt.hessian_due)
        opt.zero_grad()
        quadratic_loss(params, a).backward(create_graph=opt.hessian_due)
        opt.step()
        traj.append([p.detach().clone() for p in params])
    assert due == [True] * 5 + [s % 4 == 0 for s in range(5, 20)]
    assert opt.state_dict()["adahessian"]["hessian_updates"] == sum(due)
    assert_trajectories_close(traj, run_reference(20))


# ----------------------------------------------------------------------------- warm-up and clip
# L(p) = sum(a * p**4 / 12 + b * p) is separable with Hessian diag(a * p**2): every probe gives it
# exactly, and unlike a quadratic's it changes along the way, so the Hessian schedule matters.


def quartic_run(steps: int, reference: bool, warmup=0, interval=1, clip=None, foreach=False):
    g = torch.Generator().manual_seed(1)
    a = [torch.rand(s, generator=g, dtype=F64) * 2 + 0.1 for s in SHAPES]
    b = [torch.randn(s, generator=g, dtype=F64) * 0.3 for s in SHAPES]
    params = [torch.randn(s, generator=g, dtype=F64).requires_grad_(not reference) for s in SHAPES]
    spec = [(idx, {**opts, "update_clip": clip}) for idx, opts in GROUPS]
    order = order_of(spec)
    kwargs = dict(update_interval=interval, hessian_warmup=warmup)
    if reference:
        ref = ReferenceAdaHessian(make_groups(params, spec), **kwargs)
    else:
        opt = AdaHessian(make_groups(params, spec), seed=0, foreach=foreach, **kwargs)
    traj, due = [], []
    for _ in range(steps):
        if reference:
            due.append(ref.hessian_due)
            grads = [a[i] * params[i] ** 3 / 3 + b[i] for i in order]
            ref.step(grads, [a[i] * params[i] ** 2 for i in order] if ref.hessian_due else None)
        else:
            due.append(opt.hessian_due)
            opt.zero_grad()
            loss = sum(
                (ai * p**4 / 12 + bi * p).sum() for ai, bi, p in zip(a, b, params, strict=True)
            )
            loss.backward(create_graph=opt.hessian_due)  # type: ignore[union-attr]
            opt.step()
        traj.append([p.detach().clone() for p in params])
    return traj, due


@pytest.mark.parametrize("foreach", [False, True], ids=["for-loop", "foreach"])
@pytest.mark.parametrize(
    ("warmup", "interval", "clip"),
    [(0, 3, None), (5, 3, None), (5, 4, 0.5), (0, 1, 0.3)],
    ids=["lazy", "lazy-after-warmup", "lazy-after-warmup-clipped", "clipped"],
)
def test_warmup_and_clip_match_the_reference_on_a_separable_quartic(
    foreach, warmup, interval, clip
):
    traj, due = quartic_run(25, False, warmup, interval, clip, foreach)
    ref_traj, ref_due = quartic_run(25, True, warmup, interval, clip)
    assert due == ref_due == [s < warmup or (s - warmup) % interval == 0 for s in range(25)]
    for got, want in zip(traj, ref_traj, strict=True):
        for x, y in zip(got, want, strict=True):
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-12)
    # Each setting changes the trajectory here (so the comparison above can fail).
    if warmup:
        assert not torch.equal(quartic_run(25, True, 0, interval, clip)[0][-1][0], ref_traj[-1][0])
    if clip is not None:
        assert not torch.equal(quartic_run(25, True, warmup, interval)[0][-1][0], ref_traj[-1][0])


def test_warmup_survives_a_state_dict_round_trip_and_can_be_changed():
    a, p0 = quadratic()
    params = [p.clone().requires_grad_(True) for p in p0]
    opt = AdaHessian(make_groups(params), seed=0, update_interval=4, hessian_warmup=3)
    for _ in range(2):
        opt.zero_grad()
        quadratic_loss(params, a).backward(create_graph=opt.hessian_due)
        opt.step()
    twin_params = [p.detach().clone().requires_grad_(True) for p in params]
    twin = AdaHessian(make_groups(twin_params), seed=0)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    assert twin.hessian_warmup == 3 and twin.update_interval == 4
    schedule = []
    for _ in range(8):
        schedule.append(twin.hessian_due)
        twin._steps += 1  # the schedule alone
    assert schedule == [True, True, False, False, False, True, False, False]  # steps 2..9
    opt.hessian_warmup = 0  # may be changed between steps; step 2 then follows the interval
    assert not opt.hessian_due


def test_update_clip_bounds_every_step_where_one_probe_sees_almost_no_curvature():
    """Rank-1 least squares (the problem of torch's goes-right-direction tests): 200 draws,
    5 steps at lr 0.15. A one-probe estimate can be near zero, and the paper's update then
    overshoots, ending above the initial loss in some draws; clipped to [-1, 1], none does, and
    no coordinate moves by more than lr per step."""
    ends_higher = {None: 0, 1.0: 0}
    for clip in ends_higher:
        for draw in range(200):
            g = torch.Generator().manual_seed(draw)
            w = torch.randn(10, 5, generator=g, requires_grad=True)
            b = torch.randn(10, generator=g, requires_grad=True)
            x = torch.randn(5, generator=g)
            opt = AdaHessian([w, b], lr=0.15, seed=draw, update_clip=clip)

            def closure(opt=opt, w=w, b=b, x=x) -> Tensor:
                opt.zero_grad()
                loss = (w.mv(x) + b).pow(2).sum()
                loss.backward(create_graph=True)
                return loss

            initial = closure().item()
            for _ in range(5):
                before = torch.cat([w.detach().flatten(), b.detach().flatten()])
                opt.step(closure)
                moved = torch.cat([w.detach().flatten(), b.detach().flatten()]) - before
                if clip is not None:
                    assert moved.abs().max() <= 0.15 * clip + 1e-6
            ends_higher[clip] += closure().item() >= initial
    assert ends_higher[None] > 0, "the problem must show the failure the clip guards against"
    assert ends_higher[1.0] == 0


def test_reference_is_sensitive_to_each_setting():
    """Guards the comparison above: changing any setting changes the reference trajectory."""
    base = run_reference(10)[-1]
    for key, value in [("hessian_power", 0.75), ("block_size", 2), ("weight_decay", 0.5)]:
        spec = [(idx, {**opts, key: value}) for idx, opts in GROUPS]
        other = run_reference(10, spec=spec)[-1]
        assert any(not torch.allclose(x, y) for x, y in zip(base, other, strict=True)), key


def test_lr_scheduler_changes_the_step():
    def factor(t: int) -> float:
        return 0.5 ** (t // 4)

    traj = run_optimizer(
        16, schedule=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda e: factor(e))
    )
    assert_trajectories_close(traj, run_reference(16, lr_at=factor))


def test_param_groups_behave_like_separate_optimizers():
    joint = run_optimizer(12)
    for spec in ([g] for g in GROUPS):
        alone = run_optimizer(12, spec=spec)
        for step in range(12):
            for i in spec[0][0]:
                torch.testing.assert_close(joint[step][i], alone[step][i], rtol=0, atol=0)


def test_external_hessian_equals_hutchinson_on_quadratic():
    a, p0 = quadratic()
    params = [p.clone().requires_grad_(True) for p in p0]
    opt = AdaHessian(make_groups(params), seed=0)
    order = order_of()
    for _ in range(10):
        opt.zero_grad()
        quadratic_loss(params, a).backward()  # no graph needed when the Hessian is given
        opt.step(hessian=[a[i] for i in order])
    want = run_optimizer(10)[-1]
    for p, w in zip(params, want, strict=True):
        torch.testing.assert_close(p.detach(), w, rtol=0, atol=0)


# ----------------------------------------------------------------------------- a small real model


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(12, 4)
        self.out = nn.Linear(4, 3)
        self.empty = nn.Parameter(torch.zeros(0, 3))  # a zero-size parameter

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.conv(x)).flatten(1)
        return self.out(torch.tanh(self.fc(h))) + self.empty.sum()


def batches(n: int, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(8, 1, 4, 4, generator=g, dtype=F64), torch.randint(0, 3, (8,), generator=g))
        for _ in range(n)
    ]


def make_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net().double()


def train(model: Net, opt: AdaHessian, data, skip_grad_of: str | None = None) -> None:
    for x, y in data:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward(create_graph=opt.hessian_due)
        if skip_grad_of is not None:
            getattr(model, skip_grad_of).weight.grad = None
        opt.step()


def test_foreach_equals_for_loop_on_a_real_model():
    data = batches(12)
    results = []
    for foreach in (False, True):
        model = make_net()
        opt = AdaHessian(model.parameters(), lr=0.05, weight_decay=0.01, block_size=2, seed=1,
                         update_interval=2, foreach=foreach)  # fmt: skip
        train(model, opt, data[:6])
        train(model, opt, data[6:7], skip_grad_of="fc")  # a step where one grad is None
        train(model, opt, data[7:])
        results.append((model.state_dict(), opt.state_dict()))
    (m1, o1), (m2, o2) = results
    for k in m1:
        torch.testing.assert_close(m1[k], m2[k], rtol=1e-12, atol=1e-14)
    assert o1["state"].keys() == o2["state"].keys()


@pytest.mark.parametrize("stop_at", [4, 5], ids=["after-hessian-step", "between-hessian-steps"])
def test_state_dict_round_trip_continues_bit_identically(stop_at):
    data = batches(12)
    model = make_net()
    opt = AdaHessian(model.parameters(), lr=0.05, update_interval=3, n_samples=2, seed=7)
    train(model, opt, data)
    uninterrupted = copy.deepcopy(model.state_dict())

    model = make_net()
    opt = AdaHessian(model.parameters(), lr=0.05, update_interval=3, n_samples=2, seed=7)
    train(model, opt, data[:stop_at])
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    train(model, opt, data[stop_at : stop_at + 2])  # the run goes on; the checkpoint must not

    buffer.seek(0)
    checkpoint = torch.load(buffer)
    resumed_model = make_net(seed=99)
    resumed_model.load_state_dict(checkpoint["model"])
    resumed = AdaHessian(resumed_model.parameters(), seed=123)  # seed comes from the checkpoint
    resumed.load_state_dict(checkpoint["opt"])
    assert resumed.hessian_due == (stop_at % 3 == 0)
    train(resumed_model, resumed, data[stop_at:])
    for k, v in uninterrupted.items():
        assert torch.equal(resumed_model.state_dict()[k], v), k


def test_state_dict_deepcopy_round_trip_in_lockstep():
    data = batches(8)
    model = make_net()
    opt = AdaHessian(model.parameters(), lr=0.05, seed=3)
    train(model, opt, data[:3])
    twin_model = copy.deepcopy(model)
    twin = AdaHessian(twin_model.parameters(), seed=0)
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    for batch in data[3:]:
        train(model, opt, [batch])
        train(twin_model, twin, [batch])
        for p, q in zip(model.parameters(), twin_model.parameters(), strict=True):
            assert torch.equal(p, q)


def test_seed_makes_runs_reproducible_and_leaves_global_rng_alone():
    data = batches(6)
    finals = []
    for seed in (5, 5, 6):
        model = make_net()
        rng = torch.get_rng_state()
        train(model, AdaHessian(model.parameters(), lr=0.05, seed=seed), data)
        assert torch.equal(rng, torch.get_rng_state()), "the global RNG must not be touched"
        finals.append(torch.cat([p.flatten() for p in model.parameters()]))
    assert torch.equal(finals[0], finals[1])
    assert not torch.equal(finals[0], finals[2])


def test_graph_released_after_hessian_step():
    model = make_net()
    opt = AdaHessian(model.parameters(), seed=0)
    x, y = batches(1)[0]
    nn.functional.cross_entropy(model(x), y).backward(create_graph=True)
    assert model.fc.weight.grad.grad_fn is not None
    opt.step()
    for p in model.parameters():
        assert p.grad is not None and p.grad.grad_fn is None and not p.grad.requires_grad


def test_graph_released_on_non_hessian_step_too():
    model = make_net()
    opt = AdaHessian(model.parameters(), update_interval=2, seed=0)
    train(model, opt, batches(1))
    x, y = batches(1)[0]
    assert not opt.hessian_due
    nn.functional.cross_entropy(model(x), y).backward(create_graph=True)  # wasteful but legal
    opt.step()
    assert all(p.grad.grad_fn is None for p in model.parameters())


def test_hessian_due_schedule():
    model = make_net()
    opt = AdaHessian(model.parameters(), update_interval=3, seed=0)
    due = []
    for batch in batches(7):
        due.append(opt.hessian_due)
        train(model, opt, [batch])
    assert due == [True, False, False, True, False, False, True]
    assert opt.state_dict()["adahessian"]["hessian_updates"] == 3


def test_non_hessian_steps_need_no_graph():
    model = make_net()
    opt = AdaHessian(model.parameters(), update_interval=4, seed=0)
    train(model, opt, batches(1))
    for x, y in batches(3, seed=1):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()  # plain backward
        before = model.fc.weight.detach().clone()
        opt.step()
        assert not torch.equal(before, model.fc.weight)


def test_closure_runs_with_grad_enabled_and_returns_loss():
    data = batches(4)
    model, twin = make_net(), make_net()
    opt = AdaHessian(model.parameters(), seed=0)
    twin_opt = AdaHessian(twin.parameters(), seed=0)
    for x, y in data:

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward(create_graph=opt.hessian_due)
            return loss

        with torch.no_grad():
            loss = opt.step(closure)
        assert isinstance(loss, Tensor) and loss.requires_grad
        train(twin, twin_opt, [(x, y)])
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_parameters_without_grad_are_untouched():
    model = make_net()
    model.out.bias.requires_grad_(False)
    opt = AdaHessian(model.parameters(), seed=0)
    frozen = model.out.bias.detach().clone()
    train(model, opt, batches(3), skip_grad_of="fc")
    assert torch.equal(model.out.bias, frozen)
    assert model.out.bias not in opt.state
    assert model.fc.weight not in opt.state


def test_gradient_without_graph_among_others_has_zero_curvature():
    model = make_net()
    opt = AdaHessian(model.parameters(), seed=0)
    x, y = batches(1)[0]
    nn.functional.cross_entropy(model(x), y).backward(create_graph=True)
    model.fc.weight.grad = model.fc.weight.grad.detach()
    opt.step()
    assert torch.equal(
        opt.state[model.fc.weight]["exp_hessian_diag_sq"], torch.zeros_like(model.fc.weight)
    )
    assert opt.state[model.out.weight]["exp_hessian_diag_sq"].abs().sum() > 0


def test_frozen_parameter_given_a_gradient_by_hand_has_zero_curvature():
    model = make_net()
    model.out.bias.requires_grad_(False)
    opt = AdaHessian(model.parameters(), seed=0)
    x, y = batches(1)[0]
    nn.functional.cross_entropy(model(x), y).backward(create_graph=True)
    model.out.bias.grad = torch.ones_like(model.out.bias)
    opt.step()
    state = opt.state[model.out.bias]
    assert torch.equal(state["exp_hessian_diag_sq"], torch.zeros_like(model.out.bias))
    assert opt.state[model.out.weight]["exp_hessian_diag_sq"].abs().sum() > 0


def test_parameter_added_between_hessian_steps_waits_for_curvature():
    model = make_net()
    opt = AdaHessian([model.conv.weight], update_interval=2, seed=0)
    train(model, opt, batches(1))
    opt.add_param_group({"params": [model.fc.weight]})
    before = model.fc.weight.detach().clone()
    train(model, opt, batches(1, seed=1))  # not a Hessian step: fc has no curvature yet
    assert torch.equal(model.fc.weight, before)
    train(model, opt, batches(1, seed=2))  # Hessian step
    assert not torch.equal(model.fc.weight, before)
    assert opt.state[model.fc.weight]["hessian_step"] == 1


# ----------------------------------------------------------------------------- no curvature
# (bad input: tests/adahessian/test_bad_input.py)


@pytest.mark.parametrize("path", ["backward", "opt.backward", "closure"])
def test_a_loss_linear_in_every_parameter_has_zero_curvature(path):
    """Differentiated with the graph kept, a linear loss has constant gradients (no graph on
    p.grad, as when create_graph is forgotten); the optimizer tells the two apart and takes the
    paper's step with a zero Hessian: p -= lr * m_hat / eps."""
    g = torch.Generator().manual_seed(0)
    c = [torch.randn(s, generator=g, dtype=F64) for s in SHAPES[:3]]
    params = [torch.randn(s, generator=g, dtype=F64, requires_grad=True) for s in SHAPES[:3]]
    ref_params = [p.detach().clone() for p in params]
    opt = AdaHessian(params, lr=0.01, eps=0.1, seed=0)
    reference = ReferenceAdaHessian([{"params": ref_params, "lr": 0.01, "eps": 0.1}])

    def loss() -> Tensor:
        return sum((ci * p).sum() for ci, p in zip(c, params, strict=True))  # type: ignore[return-value]

    for _ in range(3):
        opt.zero_grad()
        if path == "backward":
            loss().backward(create_graph=True)
            opt.step()
        elif path == "opt.backward":
            opt.backward(loss())
            opt.step()
        else:
            opt.step(lambda: loss().backward(create_graph=True))
        reference.step(c, [torch.zeros_like(ci) for ci in c])
    for p, q in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p.detach(), q, rtol=1e-14, atol=0)
    assert all(opt.state[p]["hessian_step"] == 3 for p in params)
