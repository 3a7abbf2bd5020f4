"""Mixed precision (GradScaler, low-precision parameters) and gradient accumulation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

from adahessian import AdaHessian, hutchinson_diagonal

F64 = torch.float64


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.fc = nn.Linear(12, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(self.conv(x)).flatten(1)
        return self.out(torch.tanh(self.fc(h)))


def make_net(dtype=F64) -> Net:
    torch.manual_seed(0)
    return Net().to(dtype)


def batches(n: int, size: int = 16, dtype=F64, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        x = torch.randn(size, 1, 4, 4, generator=g, dtype=dtype)
        out.append((x, torch.randint(0, 3, (size,), generator=g)))
    return out


def loss_of(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    return nn.functional.cross_entropy(model(x), y)


def flat_params(model: nn.Module) -> Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


# ----------------------------------------------------------------------------- GradScaler


def constant_scaler(scale: float = 1024.0) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", init_scale=scale, growth_interval=10**9)


@pytest.mark.parametrize("update_interval", [1, 2], ids=["every-step", "every-2nd"])
def test_constant_loss_scale_gives_the_unscaled_trajectory(update_interval):
    data = batches(8)
    plain, scaled = make_net(), make_net()
    opt = AdaHessian(plain.parameters(), lr=0.05, update_interval=update_interval, seed=0)
    scaled_opt = AdaHessian(scaled.parameters(), lr=0.05, update_interval=update_interval, seed=0)
    scaler = constant_scaler()
    for x, y in data:
        opt.zero_grad()
        loss_of(plain, x, y).backward(create_graph=opt.hessian_due)
        opt.step()

        scaled_opt.zero_grad()
        scaler.scale(loss_of(scaled, x, y)).backward(create_graph=scaled_opt.hessian_due)
        scaler.step(scaled_opt)
        scaler.update()
    assert scaler.get_scale() == 1024.0
    torch.testing.assert_close(flat_params(scaled), flat_params(plain), rtol=1e-12, atol=1e-14)
    for p, q in zip(plain.parameters(), scaled.parameters(), strict=True):
        torch.testing.assert_close(
            scaled_opt.state[q]["exp_hessian_diag_sq"], opt.state[p]["exp_hessian_diag_sq"]
        )


def test_unscale_first_needs_the_loss_scale():
    x, y = batches(1)[0]
    plain, scaled = make_net(), make_net()
    opt = AdaHessian(plain.parameters(), lr=0.05, seed=0)
    scaled_opt = AdaHessian(scaled.parameters(), lr=0.05, seed=0)
    opt.zero_grad()
    loss_of(plain, x, y).backward(create_graph=True)
    opt.step()

    scaler = constant_scaler()
    scaler.scale(loss_of(scaled, x, y)).backward(create_graph=True)
    scaler.unscale_(scaled_opt)  # e.g. to clip gradients
    before = flat_params(scaled)
    with pytest.raises(RuntimeError, match=r"loss_scale=scaler\.get_scale"):
        scaler.step(scaled_opt)
    assert torch.equal(flat_params(scaled), before)
    scaler.step(scaled_opt, loss_scale=scaler.get_scale())
    torch.testing.assert_close(flat_params(scaled), flat_params(plain), rtol=1e-12, atol=1e-14)


def test_inf_gradient_skips_the_step_and_frees_the_graph():
    model = make_net()
    opt = AdaHessian(model.parameters(), lr=0.05, seed=0)
    scaler = constant_scaler()
    x, y = batches(1)[0]
    scaler.scale(loss_of(model, x, y)).backward(create_graph=True)
    scaler.step(opt)
    scaler.update()
    state = copy.deepcopy(opt.state_dict())
    before = flat_params(model)

    opt.zero_grad()
    scaler.scale(loss_of(model, x, y)).backward(create_graph=True)
    with torch.no_grad():
        model.fc.bias.grad[0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert torch.equal(flat_params(model), before)
    assert opt.skipped_steps == 1
    assert scaler.get_scale() < 1024.0, "GradScaler saw the inf and backed off"
    after = opt.state_dict()
    assert after["adahessian"]["steps"] == state["adahessian"]["steps"]
    for k, v in state["state"].items():
        for name in ("exp_avg", "exp_hessian_diag_sq"):
            assert torch.equal(after["state"][k][name], v[name])
    assert all(p.grad.grad_fn is None for p in model.parameters())


def test_non_finite_hessian_skips_the_step_under_a_scaler():
    model = make_net()
    opt = AdaHessian(model.parameters(), lr=0.05, seed=0)
    scaler = constant_scaler()
    x, y = batches(1)[0]
    scaler.scale(loss_of(model, x, y)).backward()
    before = flat_params(model)
    bad = [torch.full_like(p, float("nan")) for p in model.parameters()]
    scaler.step(opt, hessian=bad)
    assert torch.equal(flat_params(model), before)
    assert opt.skipped_steps == 1 and opt.hessian_due
    assert not opt.state or all(s["step"] == 0 for s in opt.state.values())


def fp16_mlp_run(steps: int, init_scale: float, **kwargs) -> tuple[list[float], AdaHessian, float]:
    """A small MLP under float16 autocast on the CPU with a GradScaler: the losses, the
    optimizer and the scaler's final scale."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.Tanh(), nn.Linear(64, 5))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 20, generator=g), torch.randint(0, 5, (128,), generator=g)
    opt = AdaHessian(model.parameters(), lr=0.05, seed=0, **kwargs)
    scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = nn.functional.cross_entropy(model(x), y)
        scaler.scale(loss).backward(create_graph=opt.hessian_due)
        scaler.step(opt)
        scaler.update()
        losses.append(loss.item())
    return losses, opt, scaler.get_scale()


def test_a_hessian_product_that_overflows_where_the_gradient_does_not_lowers_the_probe_scale():
    """At a loss scale of 2**18 the float16 Hessian-vector product overflows while the gradient
    does not, so GradScaler never backs off: the optimizer scales its probes down instead
    (exactly, by powers of two) and training goes on."""
    losses, opt, scale = fp16_mlp_run(40, 2.0**18)
    assert scale == 2.0**18, "the gradients never overflowed: the scaler could not have helped"
    assert 1 <= opt.skipped_steps <= 8
    assert opt.probe_scale == 2.0**-opt.skipped_steps
    assert opt.state_dict()["adahessian"]["steps"] == 40 - opt.skipped_steps
    assert losses[-1] < 0.8 * losses[0]
    # At a scale where nothing overflows, nothing changes and no step is skipped.
    _, calm, _ = fp16_mlp_run(5, 2.0**4)
    assert calm.skipped_steps == 0 and calm.probe_scale == 1.0


def test_the_probe_scale_grows_back_and_is_saved(monkeypatch: pytest.MonkeyPatch):
    from adahessian import optimizer

    monkeypatch.setattr(optimizer, "_PROBE_SCALE_GROWTH_INTERVAL", 5)
    _, opt, _ = fp16_mlp_run(12, 2.0**18)
    # backed off on the first steps, then doubled after 5 finite Hessian steps (and maybe
    # backed off again, as a GradScaler does): the saved state carries both counters.
    saved = opt.state_dict()["adahessian"]
    assert saved["probe_scale"] == opt.probe_scale
    assert saved["probe_scale_growth"] == opt._probe_scale_growth
    assert opt.probe_scale > 2.0**-opt.skipped_steps, "the scale grew back at least once"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_low_precision_parameters_keep_float32_state(dtype):
    """Curvature 1000 in every entry: D**2 = 1e6 overflows float16 (max 65504) unless formed in
    float32. The moments must be float32 and finite, and the step must match float32 math."""
    a = 1000.0
    p = nn.Parameter(torch.full((4, 8), 0.5, dtype=dtype))
    opt = AdaHessian([p], lr=0.01, block_size=4, seed=0)
    for _ in range(3):
        opt.zero_grad()
        (0.5 * a * (p.float() ** 2).sum()).backward(create_graph=True)
        opt.step()
    state = opt.state[p]
    assert state["exp_avg"].dtype == torch.float32
    assert state["exp_hessian_diag_sq"].dtype == torch.float32
    assert torch.isfinite(state["exp_hessian_diag_sq"]).all()
    torch.testing.assert_close(
        state["exp_hessian_diag_sq"], torch.full((4, 8), (1 - 0.999**3) * a * a), rtol=1e-5, atol=0
    )
    assert p.dtype == dtype and torch.isfinite(p).all() and (p < 0.5).all()


# ----------------------------------------------------------------------------- accumulation


@pytest.mark.parametrize("micro_batches", [2, 4])
def test_accumulated_micro_batches_equal_one_step_on_the_concatenation(micro_batches):
    data = batches(6)
    whole, split = make_net(), make_net()
    opt = AdaHessian(whole.parameters(), lr=0.05, update_interval=2, n_samples=2, seed=3)
    split_opt = AdaHessian(split.parameters(), lr=0.05, update_interval=2, n_samples=2, seed=3)
    for x, y in data:
        opt.zero_grad()
        loss_of(whole, x, y).backward(create_graph=opt.hessian_due)
        opt.step()

        split_opt.zero_grad()
        for xs, ys in zip(x.chunk(micro_batches), y.chunk(micro_batches), strict=True):
            split_opt.backward(loss_of(split, xs, ys) / micro_batches)
            assert all(p.grad.grad_fn is None for p in split.parameters()), "graph freed at once"
        split_opt.step()
    torch.testing.assert_close(flat_params(split), flat_params(whole), rtol=1e-10, atol=1e-12)
    for p, q in zip(whole.parameters(), split.parameters(), strict=True):
        torch.testing.assert_close(
            split_opt.state[q]["exp_hessian_diag_sq"], opt.state[p]["exp_hessian_diag_sq"]
        )


def test_re_differentiating_the_accumulated_gradient_inflates_the_estimate():
    """The defect the backward() path avoids: an HVP of the accumulated gradient after each
    micro-batch counts earlier micro-batches again."""
    x, y = batches(1)[0]
    model = make_net()
    params = list(model.parameters())
    probes = [torch.ones_like(p) for p in params]
    grads = torch.autograd.grad(loss_of(model, x, y), params, create_graph=True)
    exact = torch.autograd.grad(grads, params, probes)
    acc = None
    naive = [torch.zeros_like(p) for p in params]
    for xs, ys in zip(x.chunk(2), y.chunk(2), strict=True):
        g = torch.autograd.grad(loss_of(model, xs, ys) / 2, params, create_graph=True)
        acc = g if acc is None else [a + b for a, b in zip(acc, g, strict=True)]
        hv = torch.autograd.grad(acc, params, probes, retain_graph=True)
        naive = [n + h for n, h in zip(naive, hv, strict=True)]
    err = sum((n - e).abs().sum() for n, e in zip(naive, exact, strict=True))
    assert err > 1e-3


def test_autocast_bfloat16_forward_keeps_float32_state_and_tracks_float32_run():
    """Under CPU autocast the matmuls run in bfloat16; the double backward goes through them and
    the step stays close to the float32 run for most coordinates (bfloat16 has ~3 significant
    digits; coordinates with almost no curvature amplify that, as they would any noise)."""
    data = batches(4, dtype=torch.float32)
    ref, amp = make_net(torch.float32), make_net(torch.float32)
    ref_opt = AdaHessian(ref.parameters(), lr=0.01, seed=0)
    amp_opt = AdaHessian(amp.parameters(), lr=0.01, seed=0)
    for x, y in data:
        ref_opt.zero_grad()
        loss_of(ref, x, y).backward(create_graph=True)
        ref_opt.step()
        amp_opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = loss_of(amp, x, y)
        loss.backward(create_graph=True)
        amp_opt.step()
    for p in amp.parameters():
        assert amp_opt.state[p]["exp_hessian_diag_sq"].dtype == torch.float32
    moved = (flat_params(ref) - flat_params(make_net(torch.float32))).abs()
    diff = (flat_params(amp) - flat_params(ref)).abs()
    assert torch.isfinite(flat_params(amp)).all()
    assert diff.median() < 0.05 * moved.median()


def test_zero_grad_drops_a_pending_estimate():
    model, twin = make_net(), make_net()
    opt = AdaHessian(model.parameters(), lr=0.05, seed=0)
    twin_opt = AdaHessian(twin.parameters(), lr=0.05, seed=0)
    (x, y), (x2, y2) = batches(2)
    opt.backward(loss_of(model, x2, y2))  # abandoned: zero_grad must forget it
    opt.zero_grad()
    opt._generator = None  # redraw the same probes as the twin
    opt.backward(loss_of(model, x, y))
    opt.step()
    twin_opt.backward(loss_of(twin, x, y))
    twin_opt.step()
    assert torch.equal(flat_params(model), flat_params(twin))


def test_float16_parameters_under_a_grad_scaler_take_the_estimate_in_float32():
    """float16 parameters at 0.01, curvature 1000, loss scale 2**10: the scaled gradient (1e4)
    fits float16 but the scaled product (1e6) does not, so the probe scale backs off until it
    fits, and the estimate (formed in float32, where dividing by the probe scale cannot
    overflow) comes back as 1000. Before, the estimate was held in float16: the backoff could
    not cure it, the probes underflowed to zero at 2**-25 and the zero "curvature" blew the
    parameters up."""
    a = 1000.0
    p = nn.Parameter(torch.full((8,), 0.01, dtype=torch.float16))
    opt = AdaHessian([p], lr=0.001, seed=0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=10**6)
    for _ in range(30):
        opt.zero_grad()
        loss = 0.5 * a * (p.float() ** 2).sum()
        scaler.scale(loss).backward(create_graph=True)
        scaler.step(opt)
        scaler.update()
    assert scaler.get_scale() == 2.0**10, "the gradients never overflowed"
    assert torch.isfinite(p).all() and p.abs().max() <= 0.01
    assert 2.0**-14 <= opt.probe_scale < 1.0, "the scale backed off and stayed representable"
    state = opt.state[p]
    assert int(state["hessian_step"]) == 30 - opt.skipped_steps > 20
    corrected = state["exp_hessian_diag_sq"] / (1 - 0.999 ** int(state["hessian_step"]))
    torch.testing.assert_close(corrected.sqrt(), torch.full_like(corrected, a), rtol=1e-2, atol=0)


def test_a_probe_scale_below_the_dtype_s_smallest_normal_is_an_error_not_zero_curvature():
    p = nn.Parameter(torch.ones(4, dtype=torch.float16))
    (grad,) = torch.autograd.grad((p.float() ** 2).sum(), p, create_graph=True)
    g = torch.Generator().manual_seed(0)
    underflow = r"scale 2\.98023e-08 underflows the torch\.float16 probes"
    with pytest.raises(ValueError, match=underflow):
        hutchinson_diagonal([grad], [p], generator=g, scale=2.0**-25)
    (estimate,) = hutchinson_diagonal([grad], [p], generator=g, scale=2.0**-14, retain_graph=True)
    assert estimate.dtype == torch.float32 and torch.equal(estimate, torch.full((4,), 2.0))
