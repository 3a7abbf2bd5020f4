"""The first pass's activation pattern, kept in the finite-difference passes: every spelling of
each covered kink records and replays exactly the linear piece of the first pass; with it the
quotient converges to double backward on ReLU / LeakyReLU / max-pooling networks as O(ε)
(forward) and O(ε²) (central), without it it does not; it holds under activation checkpointing;
smooth models are bit-identical with it on and off; the optimizer's trajectories follow
``hvp="autograd"``; a perturbed pass that takes another path raises with nothing changed."""

from __future__ import annotations

import copy
import itertools
import pickle
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint

from adahessian import AdaHessian, FiniteDifferenceError, finite_difference_diagonal
from adahessian.pattern import ActivationPatternError, Pattern, PatternMode, pack, unpack

F64 = torch.float64


# ----------------------------------------------------------------------------- packing


@pytest.mark.parametrize("shape", [(0,), (1,), (7,), (8,), (9,), (3, 5, 7), (2, 64)])
def test_a_mask_packs_into_one_bit_per_unit_and_back(shape: tuple[int, ...]):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5
    bits = pack(mask)
    assert bits.dtype == torch.uint8 and bits.numel() == -(-mask.numel() // 8)
    assert torch.equal(unpack(bits, mask.shape), mask)


# ----------------------------------------------------------------------------- every spelling


def _relu_kept(x: Tensor, x2: Tensor) -> Tensor:
    return torch.where(x > 0, x2, torch.zeros_like(x2))


def _leaky_kept(slope: float) -> Callable[[Tensor, Tensor], Tensor]:
    return lambda x, x2: torch.where(x > 0, x2, slope * x2)


def _hardtanh_kept(lo: float, hi: float) -> Callable[[Tensor, Tensor], Tensor]:
    def kept(x: Tensor, x2: Tensor) -> Tensor:
        limit = torch.where(x >= hi, torch.full_like(x2, hi), torch.full_like(x2, lo))
        return torch.where((x > lo) & (x < hi), x2, limit)

    return kept


def _pool_kept(dims: int, **kw: Any) -> Callable[[Tensor, Tensor], Tensor]:
    with_indices = getattr(F, f"max_pool{dims}d_with_indices")

    def kept(x: Tensor, x2: Tensor) -> Tensor:
        _, idx = with_indices(x, **kw)
        flat = x2.flatten(start_dim=x2.dim() - dims)
        return flat.gather(-1, idx.flatten(start_dim=idx.dim() - dims)).view(idx.shape)

    return kept


# (id, the kink in one spelling, the first pass's linear piece at x evaluated at x2, input shape)
SPELLINGS: list[tuple[str, Callable[[Tensor], Any], Callable[[Tensor, Tensor], Tensor], tuple]] = [
    ("nn.ReLU", nn.ReLU(), _relu_kept, (4, 6)),
    ("nn.ReLU-inplace", nn.ReLU(inplace=True), _relu_kept, (4, 6)),
    ("F.relu", F.relu, _relu_kept, (4, 6)),
    ("F.relu-inplace", lambda x: F.relu(x, inplace=True), _relu_kept, (4, 6)),
    ("F.relu_", F.relu_, _relu_kept, (4, 6)),
    ("torch.relu", torch.relu, _relu_kept, (4, 6)),
    ("torch.relu_", torch.relu_, _relu_kept, (4, 6)),
    ("Tensor.relu", lambda x: x.relu(), _relu_kept, (4, 6)),
    ("Tensor.relu_", lambda x: x.relu_(), _relu_kept, (4, 6)),
    ("nn.LeakyReLU", nn.LeakyReLU(0.1), _leaky_kept(0.1), (4, 6)),
    ("nn.LeakyReLU-inplace", nn.LeakyReLU(0.1, inplace=True), _leaky_kept(0.1), (4, 6)),
    ("F.leaky_relu-default", F.leaky_relu, _leaky_kept(0.01), (4, 6)),
    ("F.leaky_relu_", lambda x: F.leaky_relu_(x, 0.2), _leaky_kept(0.2), (4, 6)),
    ("F.leaky_relu-negative-slope", lambda x: F.leaky_relu(x, -0.5), _leaky_kept(-0.5), (4, 6)),
    ("nn.Hardtanh", nn.Hardtanh(-0.5, 0.5), _hardtanh_kept(-0.5, 0.5), (4, 6)),
    ("F.hardtanh_", lambda x: F.hardtanh_(x, -0.5, 0.5), _hardtanh_kept(-0.5, 0.5), (4, 6)),
    ("nn.ReLU6", lambda x: nn.ReLU6()(x * 6), lambda x, x2: _hardtanh_kept(0, 6)(x * 6, x2 * 6),
     (4, 6)),
    ("nn.ReLU6-inplace", lambda x: nn.ReLU6(inplace=True)(x * 6),
     lambda x, x2: _hardtanh_kept(0, 6)(x * 6, x2 * 6), (4, 6)),
    ("F.relu6", lambda x: F.relu6(x * 6), lambda x, x2: _hardtanh_kept(0, 6)(x * 6, x2 * 6),
     (4, 6)),
    ("nn.MaxPool1d", nn.MaxPool1d(2), _pool_kept(1, kernel_size=2), (2, 3, 8)),
    ("nn.MaxPool2d", nn.MaxPool2d(2), _pool_kept(2, kernel_size=2), (2, 3, 6, 6)),
    ("nn.MaxPool3d", nn.MaxPool3d(2), _pool_kept(3, kernel_size=2), (2, 2, 4, 4, 4)),
    ("nn.MaxPool2d-unbatched", nn.MaxPool2d(2), _pool_kept(2, kernel_size=2), (3, 6, 6)),
    ("nn.MaxPool2d-stride-padding-ceil",
     nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True),
     _pool_kept(2, kernel_size=3, stride=2, padding=1, ceil_mode=True), (2, 3, 7, 7)),
    ("nn.MaxPool2d-dilation", nn.MaxPool2d(2, dilation=2),
     _pool_kept(2, kernel_size=2, dilation=2), (2, 3, 7, 7)),
    ("F.max_pool2d-return-indices", lambda x: F.max_pool2d(x, 2, return_indices=True)[0],
     _pool_kept(2, kernel_size=2), (2, 3, 6, 6)),
    ("F.max_pool2d_with_indices", lambda x: F.max_pool2d_with_indices(x, 2)[0],
     _pool_kept(2, kernel_size=2), (2, 3, 6, 6)),
    ("torch.max_pool2d", lambda x: torch.max_pool2d(x, 2), _pool_kept(2, kernel_size=2),
     (2, 3, 6, 6)),
    ("torch.max_pool1d_with_indices", lambda x: torch.max_pool1d_with_indices(x, 2)[0],
     _pool_kept(1, kernel_size=2), (2, 3, 8)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("spelling", "kept", "shape"), [s[1:] for s in SPELLINGS], ids=[s[0] for s in SPELLINGS]
)
def test_every_spelling_records_its_pattern_and_replays_the_first_pass_piece(
    spelling: Callable[[Tensor], Any], kept: Callable[[Tensor, Tensor], Tensor], shape: tuple
):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g, dtype=F64)
    x2 = x + torch.randn(shape, generator=g, dtype=F64)  # many units switch sides
    pattern = Pattern()
    with PatternMode(pattern, replay=False):
        first = spelling(x.clone())
    assert torch.equal(first, spelling(x.clone())), "recording changed the first pass"
    assert len(pattern) == 1

    leaf = x2.clone().requires_grad_()
    mode = PatternMode(pattern, replay=True)
    with mode:
        second = spelling(leaf.clone())  # a non-leaf, as in-place spellings need
    mode.finish()
    expected_leaf = x2.clone().requires_grad_()
    expected = kept(x, expected_leaf)
    assert not torch.equal(expected, spelling(x2.clone())), "no unit switched sides"
    assert torch.equal(second, expected)
    w = torch.randn(expected.shape, generator=g, dtype=F64)
    (grad,) = torch.autograd.grad((second * w).sum(), leaf)
    (expected_grad,) = torch.autograd.grad((expected * w).sum(), expected_leaf)
    assert torch.equal(grad, expected_grad)


def test_max_pooling_returns_the_first_pass_indices_when_asked():
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))
    pattern = Pattern()
    with PatternMode(pattern, replay=False):
        _, first = nn.MaxPool2d(2, return_indices=True)(x)
    mode = PatternMode(pattern, replay=True)
    with mode:
        _, indices = nn.MaxPool2d(2, return_indices=True)(-x)
    assert torch.equal(indices, first) and indices.dtype == torch.int64
    assert pattern.nbytes == first.numel() * 4  # int32 argmax per pooled output


def test_the_pattern_holds_one_bit_per_relu_unit():
    pattern = Pattern()
    with PatternMode(pattern, replay=False):
        torch.relu(torch.randn(100, 80))
        F.hardtanh(torch.randn(10, 8))
    assert pattern.nbytes == 100 * 80 // 8 + 2 * 10


@pytest.mark.parametrize(
    "spelling",
    [
        lambda x: torch.clamp(x, min=0),
        torch.abs,
        lambda x: torch.maximum(x, torch.zeros_like(x)),
        F.hardswish,
        lambda x: F.adaptive_max_pool1d(x, 2),
    ],
    ids=["clamp", "abs", "maximum", "hardswish", "adaptive_max_pool"],
)
def test_kinks_not_covered_are_left_as_they_are(spelling: Callable[[Tensor], Tensor]):
    """The documented list of what is not covered: these keep their own kinks."""
    pattern = Pattern()
    x = torch.randn(2, 3, 8)
    with PatternMode(pattern, replay=False):
        out = spelling(x)
    assert len(pattern) == 0 and torch.equal(out, spelling(x))


# -------------------------------------------------------------------- against double backward


class KinkNet(nn.Module):
    """Convolutions with BatchNorm, ReLU (in place), a residual, LeakyReLU, max pooling and
    ReLU6: every covered kind of kink; ``checkpointed``: its two halves under activation
    checkpointing (``"non-reentrant"`` or ``"reentrant"``)."""

    def __init__(self, checkpointed: str | None = None) -> None:
        super().__init__()
        self.checkpointed = checkpointed
        self.conv1 = nn.Conv2d(1, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def first(self, x: Tensor) -> Tensor:
        h = F.relu(self.bn1(self.conv1(x)), inplace=True)
        h = F.max_pool2d(torch.relu(h + self.conv2(h)), 2)
        return h

    def second(self, h: Tensor) -> Tensor:
        h = nn.MaxPool2d(2)(F.leaky_relu(self.conv3(h), 0.1))
        return F.relu6(4 * h.flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        if self.checkpointed is None:
            return self.fc(self.second(self.first(x)))
        reentrant = self.checkpointed == "reentrant"
        if reentrant:
            x = x.detach().requires_grad_()  # reentrant checkpointing needs an input with grad
        h = checkpoint(self.first, x, use_reentrant=reentrant)
        h = checkpoint(self.second, h, use_reentrant=reentrant)
        return self.fc(h)


def kink_setup(
    dtype: torch.dtype = F64, checkpointed: str | None = None, batch: int = 32
) -> tuple[KinkNet, Callable[[], Tensor], list[Tensor]]:
    torch.manual_seed(0)
    model = KinkNet(checkpointed).to(dtype)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, 1, 16, 16, generator=g, dtype=F64).to(dtype)
    y = torch.randint(0, 3, (batch,), generator=g)
    params = list(model.parameters())

    def closure() -> Tensor:
        for p in params:
            p.grad = None
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return model, closure, params


def _double_backward(
    model: nn.Module, closure: Callable[[], Tensor], probe: list[Tensor], buffers: dict
) -> Tensor:
    """v ⊙ Hv by plain double backward (no checkpointing) on the closure's batch; the buffers
    put back after."""
    params = list(model.parameters())
    saved = model.checkpointed  # type: ignore[attr-defined]
    model.checkpointed = None  # type: ignore[attr-defined]
    try:
        x, y = _batch_of(closure)
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, params, create_graph=True)
        hv = torch.autograd.grad(grads, params, probe)
    finally:
        model.checkpointed = saved  # type: ignore[attr-defined]
        model.load_state_dict(buffers)
    return torch.cat([(v * h).flatten() for v, h in zip(probe, hv, strict=True)])


def _batch_of(closure: Callable[[], Tensor]) -> tuple[Tensor, Tensor]:
    cells = {
        name: cell.cell_contents
        for name, cell in zip(closure.__code__.co_freevars, closure.__closure__ or (), strict=True)
    }
    return cells["x"], cells["y"]


def rademacher_probe(params: list[Tensor], seed: int = 5) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 2, p.shape, generator=g).to(p.dtype) * 2 - 1 for p in params]


def fd_error(
    model: KinkNet,
    closure: Callable[[], Tensor],
    params: list[Tensor],
    probe: list[Tensor],
    exact: Tensor,
    **kwargs: Any,
) -> float:
    buffers = copy.deepcopy(model.state_dict())
    _, estimate = finite_difference_diagonal(closure, params, probes=[probe], **kwargs)
    model.load_state_dict(buffers)
    e = torch.cat([t.flatten().to(F64) for t in estimate])
    return float((e - exact).norm() / exact.norm())


def test_with_the_pattern_the_error_falls_as_eps_forward_and_eps_squared_central():
    model, closure, params = kink_setup()
    probe = rademacher_probe(params)
    exact = _double_backward(model, closure, probe, copy.deepcopy(model.state_dict()))
    forward = [fd_error(model, closure, params, probe, exact, eps=e) for e in (1e-3, 1e-4, 1e-5)]
    central = [
        fd_error(model, closure, params, probe, exact, eps=e, scheme="central")
        for e in (1e-2, 1e-3, 1e-4)
    ]
    for a, b in itertools.pairwise(forward):
        assert 5 < a / b < 20, forward  # O(ε)
    for a, b in itertools.pairwise(central):
        assert 50 < a / b < 200, central  # O(ε²)
    assert forward[-1] < 5e-4 and central[-1] < 1e-5
    # Without the pattern the units that switch sides inside the step dominate: no convergence.
    free = [
        fd_error(model, closure, params, probe, exact, eps=e, keep_pattern=False)
        for e in (1e-3, 1e-4)
    ]
    assert min(free) > 100 * forward[0], (free, forward)


def test_float32_at_the_default_eps_is_close_with_the_pattern_and_far_without():
    model, closure, params = kink_setup(torch.float32, batch=64)
    model64, closure64, params64 = kink_setup(F64, batch=64)
    probe = rademacher_probe(params64)
    exact = _double_backward(model64, closure64, probe, copy.deepcopy(model64.state_dict()))
    probe32 = [v.float() for v in probe]
    kept = fd_error(model, closure, params, probe32, exact)
    free = fd_error(model, closure, params, probe32, exact, keep_pattern=False)
    assert kept < 0.05, kept
    assert free > 10 * kept, (free, kept)


@pytest.mark.parametrize("checkpointed", ["non-reentrant", "reentrant"])
def test_checkpointed_segments_recompute_with_the_kept_pattern(checkpointed: str):
    model, closure, params = kink_setup()
    probe = rademacher_probe(params)
    buffers = copy.deepcopy(model.state_dict())
    for eps in (1e-3, 1e-2):  # steps large enough that many units switch sides
        _, plain = finite_difference_diagonal(closure, params, probes=[probe], eps=eps)
        model.load_state_dict(buffers)
        model.checkpointed = checkpointed
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # reentrant checkpointing's own notes
            _, ckpt = finite_difference_diagonal(closure, params, probes=[probe], eps=eps)
        model.checkpointed = None
        model.load_state_dict(buffers)
        for a, b in zip(plain, ckpt, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_nested_checkpoints_are_refused_rather_than_misaligned():
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(4, 6), nn.ReLU())
    outer_head = nn.Linear(6, 3)
    params = list(inner.parameters()) + list(outer_head.parameters())
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(1))

    def segment(h: Tensor) -> Tensor:
        return torch.relu(outer_head(checkpoint(inner, h, use_reentrant=False)))

    def closure() -> Tensor:
        for p in params:
            p.grad = None
        loss = checkpoint(segment, x, use_reentrant=False).square().sum()
        loss.backward()
        return loss

    before = [p.detach().clone() for p in params]
    with pytest.raises(ActivationPatternError, match=r"checkpoints must not be nested"):
        finite_difference_diagonal(closure, params, eps=1e-3)
    assert all(torch.equal(p, q) for p, q in zip(params, before, strict=True))
    _, estimate = finite_difference_diagonal(closure, params, eps=1e-3, keep_pattern=False)
    assert all(torch.isfinite(e).all() for e in estimate)


def test_a_smooth_model_gives_bit_identical_results_with_the_pattern_on_and_off():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3), nn.GELU()).double()
    twin = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(16, 5, generator=g, dtype=F64), torch.randint(0, 3, (16,), generator=g))
        for _ in range(4)
    ]

    def train(net: nn.Module, keep: bool) -> None:
        opt = AdaHessian(
            net.parameters(), lr=0.05, seed=0, hvp="finite-difference", fd_keep_pattern=keep
        )
        for x, y in batches:

            def closure(x: Tensor = x, y: Tensor = y) -> Tensor:
                opt.zero_grad()
                loss = F.cross_entropy(net(x), y)
                loss.backward()
                return loss

            opt.step(closure)

    train(model, True)
    train(twin, False)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(("dtype", "tolerance"), [(F64, 5e-3), (torch.float32, 0.05)])
def test_the_trajectory_on_a_relu_network_follows_autograd_with_the_same_probes(
    dtype: torch.dtype, tolerance: float
):
    def train(hvp: str, keep: bool = True) -> tuple[Tensor, Tensor]:
        model, _, _ = kink_setup(dtype)
        start = torch.cat([p.detach().flatten() for p in model.parameters()])
        opt = AdaHessian(
            model.parameters(), lr=0.01, seed=0, hvp=hvp, **(
                {"fd_keep_pattern": keep} if hvp != "autograd" else {}
            )
        )  # fmt: skip
        g = torch.Generator().manual_seed(3)
        for _ in range(5):
            x = torch.randn(32, 1, 16, 16, generator=g, dtype=F64).to(dtype)
            y = torch.randint(0, 3, (32,), generator=g)

            def closure(x: Tensor = x, y: Tensor = y) -> Tensor:
                opt.zero_grad()
                loss = F.cross_entropy(model(x), y)
                loss.backward(create_graph=hvp == "autograd")
                return loss

            opt.step(closure)
        end = torch.cat([p.detach().flatten() for p in model.parameters()])
        return start, end

    start, autograd_end = train("autograd")
    _, kept_end = train("finite-difference")
    _, free_end = train("finite-difference", keep=False)
    moved = (autograd_end - start).norm()
    kept = float((kept_end - autograd_end).norm() / moved)
    free = float((free_end - autograd_end).norm() / moved)
    # Compared with the distance travelled, each at its default ε: a coordinate whose curvature
    # is near zero divides by |D| + eps, which amplifies the quotient's error there.
    assert kept < tolerance, kept
    assert free > 10 * kept, (free, kept)


# ----------------------------------------------------------------------------- another path


def _path(first: Callable[[Tensor], Tensor], other: Callable[[Tensor], Tensor]) -> Callable:
    """A closure whose perturbed pass applies ``other`` to the logits where the first applied
    ``first`` (data-dependent control flow)."""

    def make(model: nn.Module, x: Tensor, y: Tensor, opt: AdaHessian) -> Callable[[], Tensor]:
        calls: list[int] = []

        def closure() -> Tensor:
            calls.append(1)
            opt.zero_grad()
            logits = model(x)
            logits = first(logits) if len(calls) == 1 else other(logits)
            loss = F.cross_entropy(logits, y)
            loss.backward()
            return loss

        return closure

    return make


MISMATCHES = [
    ("another-kink", _path(torch.relu, lambda t: F.leaky_relu(t, 0.1)),
     r"took another path than the first: kink \d+ is a leaky_relu\(0\.1\) on \(32, 3\) where "
     r"the first pass had a relu on \(32, 3\)"),
    ("another-shape", _path(torch.relu, lambda t: torch.cat([torch.relu(t[:, :2]), t[:, 2:]], 1)),
     r"kink \d+ is a relu on \(32, 2\) where the first pass had a relu on \(32, 3\)"),
    ("more-kinks", _path(lambda t: t, torch.relu),
     r"met more kinks than the first pass \(\d+\): kink \d+ is a relu on \(32, 3\)"),
    ("fewer-kinks", _path(torch.relu, lambda t: t),
     r"met \d+ kinks where the first pass met \d+: the closure must take the same path"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "match"), [m[1:] for m in MISMATCHES], ids=[m[0] for m in MISMATCHES]
)
def test_a_perturbed_pass_on_another_path_raises_and_changes_nothing(make: Callable, match: str):
    model, _, params = kink_setup()
    opt = AdaHessian(params, lr=0.05, seed=0, hvp="finite-difference")
    x, y = _batch_of(kink_setup()[1])
    opt.step(_plain(model, x, y, opt))
    before_params = [p.detach().clone() for p in params]
    before_steps = opt.state_dict()["adahessian"]["steps"]
    before_generator = opt._probe_generator().get_state()
    before_grads = [p.grad for p in params]
    before_grad_values = [p.grad.clone() for p in params]
    before_rng = torch.get_rng_state()
    with pytest.raises(ActivationPatternError, match=match) as info:
        opt.step(make(model, x, y, opt))
    assert isinstance(info.value, FiniteDifferenceError)
    # parameters, counters and the probe generator as before the step (the whole state: the
    # bad-closure table of test_finite_difference.py) ...
    assert all(torch.equal(p, q) for p, q in zip(params, before_params, strict=True))
    assert opt.state_dict()["adahessian"]["steps"] == before_steps
    assert torch.equal(opt._probe_generator().get_state(), before_generator)
    # ... the gradients the parameters held before it (the same tensors, unchanged) ...
    assert all(p.grad is g for p, g in zip(params, before_grads, strict=True))
    assert all(torch.equal(p.grad, g) for p, g in zip(params, before_grad_values, strict=True))
    # ... and the global RNG as after the one forward at θ (no dropout here: unchanged)
    assert torch.equal(torch.get_rng_state(), before_rng)


def _plain(model: nn.Module, x: Tensor, y: Tensor, opt: AdaHessian) -> Callable[[], Tensor]:
    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def test_the_switch_round_trips_through_copies_and_pickles():
    params = [torch.zeros(3, requires_grad=True)]
    opt = AdaHessian(params, hvp="finite-difference", fd_keep_pattern=False)
    assert AdaHessian(params, hvp="finite-difference").fd_keep_pattern is True
    assert copy.deepcopy(opt).fd_keep_pattern is False
    assert pickle.loads(pickle.dumps(opt)).fd_keep_pattern is False
    state = opt.__getstate__()
    del state["fd_keep_pattern"]  # a copy pickled before the switch existed
    old = AdaHessian.__new__(AdaHessian)
    old.__setstate__(state)
    assert old.fd_keep_pattern is True


@pytest.mark.parametrize("value", [None, 1, "yes"])
def test_a_switch_that_is_not_a_bool_is_refused(value: Any):
    params = [torch.zeros(3, requires_grad=True)]
    with pytest.raises(ValueError, match=rf"fd_keep_pattern must be True or False, got {value!r}"):
        AdaHessian(params, hvp="finite-difference", fd_keep_pattern=value)
    with pytest.raises(ValueError, match=r"keep_pattern must be True or False"):
        finite_difference_diagonal(lambda: None, params, keep_pattern=value)
