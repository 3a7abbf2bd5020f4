"""The finite-difference curvature source against exact references: float64 products against plain
double backward on smooth models (the error falls as O(ε) forward and O(ε²) central), trajectories
against ``hvp="autograd"`` and the reference implementation, the no-trace contract of the perturbed
passes (parameters, gradients, buffers, dropout masks, global RNG), what it estimates at a ReLU
kink, and its bad input (a clear error, nothing changed)."""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from adahessian import (
    AdaHessian,
    FiniteDifferenceError,
    finite_difference_diagonal,
    hutchinson_diagonal,
)
from adahessian.finite_difference import default_eps
from adahessian.reference import ReferenceAdaHessian

F64 = torch.float64


class TinyTransformer(nn.Module):
    """Pre-norm attention block with GELU and LayerNorm (math attention: double-backward-able)."""

    def __init__(self, d: int = 8, vocab: int = 11) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.out = nn.Linear(d, vocab)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.emb(tokens)
        q, k, v = self.qkv(self.ln1(h)).chunk(3, dim=-1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
        h = h + att @ v
        h = h + self.ff(self.ln2(h))
        return self.out(h)


def smooth_model(name: str) -> tuple[nn.Module, Callable[[nn.Module], Tensor]]:
    """A float64 model and its loss on a fixed batch."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if name == "tanh-mlp":
        model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()
        x, y = torch.randn(16, 5, generator=g, dtype=F64), torch.randint(0, 3, (16,), generator=g)
        return model, lambda m: F.cross_entropy(m(x), y)
    if name == "layernorm-transformer":
        model = TinyTransformer().double()
        tokens = torch.randint(0, 11, (4, 6), generator=g)
        return model, lambda m: F.cross_entropy(
            m(tokens[:, :-1]).flatten(0, 1), tokens[:, 1:].flatten()
        )
    if name == "gelu-convnet":
        model = nn.Sequential(
            nn.Conv2d(1, 3, 3), nn.GELU(), nn.Conv2d(3, 2, 3), nn.GELU(), nn.Flatten(),
            nn.Linear(8, 3),
        ).double()  # fmt: skip
        x, y = (
            torch.randn(6, 1, 6, 6, generator=g, dtype=F64),
            torch.randint(0, 3, (6,), generator=g),
        )
        return model, lambda m: F.cross_entropy(m(x), y)
    raise KeyError(name)


def closure_of(model: nn.Module, loss_fn: Callable[[nn.Module], Tensor]) -> Callable[[], Tensor]:
    def closure() -> Tensor:
        model.zero_grad()
        loss = loss_fn(model)
        loss.backward()
        return loss

    return closure


def exact_estimate(
    model: nn.Module, loss_fn: Callable[[nn.Module], Tensor], seed: int
) -> list[Tensor]:
    params = list(model.parameters())
    grads = torch.autograd.grad(loss_fn(model), params, create_graph=True)
    return hutchinson_diagonal(grads, params, generator=torch.Generator().manual_seed(seed))


def relative_error(a: list[Tensor], b: list[Tensor]) -> float:
    num = sum(float((x - y).pow(2).sum()) for x, y in zip(a, b, strict=True))
    den = sum(float(y.pow(2).sum()) for y in b)
    return math.sqrt(num / den)


@pytest.mark.parametrize("name", ["tanh-mlp", "layernorm-transformer", "gelu-convnet"])
@pytest.mark.parametrize(
    ("scheme", "order", "epsilons"),
    [("forward", 1, (1e-2, 1e-3, 1e-4)), ("central", 2, (1e-1, 1e-2, 1e-3))],
    ids=["forward-O(eps)", "central-O(eps2)"],
)
def test_the_error_against_double_backward_falls_with_the_order_of_the_scheme(
    name: str, scheme: str, order: int, epsilons: tuple[float, ...]
):
    """Same probes (the same generator state), float64: each tenfold smaller ε divides the error
    by about 10 (forward) or 100 (central)."""
    model, loss_fn = smooth_model(name)
    exact = exact_estimate(model, loss_fn, seed=3)
    errors = []
    for eps in epsilons:
        _, estimate = finite_difference_diagonal(
            closure_of(model, loss_fn), list(model.parameters()),
            generator=torch.Generator().manual_seed(3), eps=eps, scheme=scheme,
        )  # fmt: skip
        errors.append(relative_error(estimate, exact))
    slopes = [math.log10(a / b) for a, b in itertools.pairwise(errors)]
    assert errors[-1] < 1e-3, errors
    for slope in slopes:
        assert order - 0.3 < slope < order + 0.3, (errors, slopes)


def quadratic_problem(seed: int = 0) -> tuple[list[Tensor], Callable[[list[Tensor]], Tensor]]:
    """A separable quadratic with known diagonal Hessian ``a`` (the quotient is exact)."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(4, 6), (5,), (2, 3, 3, 3)]
    a = [torch.rand(s, generator=g, dtype=F64) + 0.1 for s in shapes]
    p0 = [torch.randn(s, generator=g, dtype=F64) for s in shapes]

    def loss(params: list[Tensor]) -> Tensor:
        return sum(((ai * p * p).sum() / 2 + p.sum() / 3 for ai, p in zip(a, params, strict=True)))  # type: ignore[return-value]

    return p0, loss


def test_on_a_separable_quadratic_the_trajectory_equals_the_reference_implementation():
    p0, loss_of = quadratic_problem()
    params = [p.clone().requires_grad_(True) for p in p0]
    opt = AdaHessian(params, lr=0.05, seed=0, block_size=3, hvp="finite-difference", fd_eps=1e-3)
    ref_params = [p.clone() for p in p0]
    ref = ReferenceAdaHessian(
        [{"params": ref_params, "lr": 0.05, "block_size": 3}], update_interval=1
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = loss_of(params)
        loss.backward()
        return loss

    for _ in range(10):
        opt.step(closure)
        q = [p.clone().requires_grad_(True) for p in ref_params]
        grads = torch.autograd.grad(loss_of(q), q, create_graph=True)
        # Every Rademacher probe gives the exact diagonal of a separable quadratic.
        hess = [
            torch.autograd.grad(g.sum(), x, retain_graph=True)[0]
            for g, x in zip(grads, q, strict=True)
        ]
        ref.step([g.detach() for g in grads], hess)
    for p, r in zip(params, ref_params, strict=True):
        torch.testing.assert_close(p.detach(), r, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"update_interval": 3, "n_samples": 2}],
    ids=["every-step", "interval-3-two-probes"],
)
def test_the_trajectory_stays_close_to_autograd_with_the_same_probes(kwargs: dict[str, Any]):
    model, loss_fn = smooth_model("tanh-mlp")
    twin = copy.deepcopy(model)
    start = torch.cat([p.detach().flatten() for p in model.parameters()])
    fd_opt = AdaHessian(
        model.parameters(),
        lr=0.02,
        seed=5,
        hvp="finite-difference",
        fd_scheme="central",
        fd_eps=1e-4,
        **kwargs,
    )
    ad_opt = AdaHessian(twin.parameters(), lr=0.02, seed=5, **kwargs)

    def ad_closure() -> Tensor:
        ad_opt.zero_grad()
        loss = loss_fn(twin)
        loss.backward(create_graph=ad_opt.hessian_due)
        return loss

    for _ in range(12):
        fd_opt.step(closure_of(model, loss_fn))
        ad_opt.step(ad_closure)
    # Compared with the distance travelled: a coordinate whose curvature is near zero divides
    # by |D| + eps, which amplifies the quotient's O(ε²) error there.
    fd_end, ad_end = (
        torch.cat([p.detach().flatten() for p in m.parameters()]) for m in (model, twin)
    )
    assert float((fd_end - ad_end).norm() / (ad_end - start).norm()) < 1e-4
    assert (
        fd_opt.state_dict()["adahessian"]["hessian_updates"]
        == ad_opt.state_dict()["adahessian"]["hessian_updates"]
    )


@pytest.mark.parametrize("keep_pattern", [False, True], ids=["pattern-free", "pattern-kept"])
def test_a_relu_kink_inside_the_step(keep_pattern: bool) -> None:
    """L(θ) = relu(θ): autodiff's second derivative is 0 everywhere. With its own pattern the
    forward quotient across the kink is (1 - 0) / ε, the curvature of relu smoothed at scale ε
    (its second derivative is a Dirac delta at 0); with the first pass's pattern kept the
    perturbed pass stays on relu's zero piece and the quotient is autodiff's 0. Away from the
    kink both are 0."""
    across = 0.0 if keep_pattern else 1.0 / 1e-3
    for theta, expected in ((-0.4e-3, across), (-0.5, 0.0), (0.5, 0.0)):
        p = torch.tensor([theta], dtype=F64, requires_grad=True)

        def closure(p: Tensor = p) -> Tensor:
            p.grad = None
            loss = torch.relu(p).sum()
            loss.backward()
            return loss

        g = torch.Generator().manual_seed(0)
        while True:  # the probe +1 steps across the kink at θ < 0
            state = g.get_state()
            if int(torch.randint(0, 2, (1,), generator=g, dtype=torch.int8)) == 1:
                g.set_state(state)
                break
        _, (estimate,) = finite_difference_diagonal(
            closure, [p], generator=g, eps=1e-3, keep_pattern=keep_pattern
        )
        assert float(estimate) == pytest.approx(expected, rel=1e-9, abs=1e-12)


# ----------------------------------------------------------------------------- no trace


class Noisy(nn.Module):
    """BatchNorm (running statistics) and dropout (random masks) around smooth layers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.drop(torch.tanh(self.bn(self.fc1(x)))))


def noisy_setup() -> tuple[Noisy, Callable[[Noisy], Tensor]]:
    torch.manual_seed(0)
    model = Noisy().double()
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(12, 5, generator=g, dtype=F64), torch.randint(0, 3, (12,), generator=g)
    return model, lambda m: F.cross_entropy(m(x), y)


def test_the_perturbed_pass_leaves_no_trace():
    """After a finite-difference Hessian step's passes: the parameters bit-identical, p.grad =
    g(θ), the running statistics and the global RNG as after one forward, and the estimate equal
    (float64, small ε) to double backward's with the dropout mask of that one forward."""
    model, loss_fn = noisy_setup()
    once = copy.deepcopy(model)
    torch.manual_seed(7)
    closure_of(once, loss_fn)()
    rng_after_one = torch.get_rng_state()
    grads_once = [p.grad.clone() for p in once.parameters()]

    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    torch.manual_seed(7)
    _, estimate = finite_difference_diagonal(
        closure_of(model, loss_fn), params, generator=torch.Generator().manual_seed(4), eps=1e-6
    )
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert all(torch.equal(p.grad, g) for p, g in zip(params, grads_once, strict=True))
    for (name, b), (_, b_once) in zip(model.named_buffers(), once.named_buffers(), strict=True):
        assert torch.equal(b, b_once), name
    assert torch.equal(torch.get_rng_state(), rng_after_one)

    reference = copy.deepcopy(once)
    reference.load_state_dict(copy.deepcopy(noisy_setup()[0].state_dict()))  # buffers before
    torch.manual_seed(7)  # the same dropout mask
    exact = exact_estimate(reference, loss_fn, seed=4)
    assert relative_error(estimate, exact) < 1e-4


def test_an_optimizer_step_keeps_the_gradient_of_the_step_and_counts_one_step():
    model, loss_fn = noisy_setup()
    opt = AdaHessian(model.parameters(), seed=0, hvp="finite-difference", fd_eps=1e-5)
    calls = []

    def closure() -> Tensor:
        calls.append(1)
        return closure_of(model, loss_fn)()

    twin = copy.deepcopy(model)
    torch.manual_seed(3)
    closure_of(twin, loss_fn)()
    torch.manual_seed(3)
    opt.step(closure)
    assert len(calls) == 2, "one pass at θ and one at θ + εv"
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)
    sd = opt.state_dict()["adahessian"]
    assert sd["steps"] == 1 and sd["hessian_updates"] == 1
    opt.update_interval = 5
    calls.clear()
    opt.step(closure)  # a plain step: one pass
    assert len(calls) == 1


@pytest.mark.parametrize(("scheme", "passes"), [("forward", 3), ("central", 5)])
def test_each_probe_costs_one_pass_forward_and_two_central(scheme: str, passes: int):
    model, loss_fn = smooth_model("tanh-mlp")
    opt = AdaHessian(
        model.parameters(), seed=0, n_samples=2, hvp="finite-difference", fd_scheme=scheme
    )
    calls = []

    def closure() -> Tensor:
        calls.append(1)
        return closure_of(model, loss_fn)()

    opt.step(closure)
    assert len(calls) == passes


def test_default_eps_per_dtype():
    assert default_eps(torch.float64) < default_eps(torch.float32) < default_eps(torch.float16)
    assert default_eps(torch.float16) <= default_eps(torch.bfloat16)
    assert default_eps(torch.float64, "central") > default_eps(torch.float64)
    with pytest.raises(ValueError, match=r"no default finite-difference eps for torch\.int64"):
        default_eps(torch.int64)


def test_a_finite_difference_optimizer_round_trips_through_copies_and_state_dicts():
    model, loss_fn = smooth_model("tanh-mlp")
    opt = AdaHessian(
        model.parameters(),
        lr=0.02,
        seed=0,
        update_interval=2,
        hvp="finite-difference",
        fd_scheme="central",
        fd_eps=1e-4,
    )
    for _ in range(3):
        opt.step(closure_of(model, loss_fn))
    twin_model = copy.deepcopy(model)
    twin = AdaHessian(
        twin_model.parameters(),
        lr=0.02,
        seed=9,
        hvp="finite-difference",
        fd_scheme="central",
        fd_eps=1e-4,
    )
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    clone = copy.deepcopy(opt)
    assert (clone.hvp, clone.fd_scheme, clone.fd_eps) == ("finite-difference", "central", 1e-4)
    for _ in range(4):
        opt.step(closure_of(model, loss_fn))
        twin.step(closure_of(twin_model, loss_fn))
    for p, q in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(p, q)


# ----------------------------------------------------------------------------- bad input


def snapshot(model: nn.Module, opt: AdaHessian) -> dict[str, Any]:
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "state": copy.deepcopy(opt.state_dict()),
        "generator": opt._probe_generator().get_state(),
        "due": opt.hessian_due,
    }


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def _returns_none(model: nn.Module, loss_fn: Any, opt: AdaHessian) -> None:
    def closure() -> None:
        opt.zero_grad()
        loss_fn(model).backward()

    opt.step(closure)


def _no_backward(model: nn.Module, loss_fn: Any, opt: AdaHessian) -> None:
    def closure() -> Tensor:
        opt.zero_grad()
        return loss_fn(model)

    opt.step(closure)


def _changes_params(on_call: int) -> Callable[[nn.Module, Any, AdaHessian], None]:
    def act(model: nn.Module, loss_fn: Any, opt: AdaHessian) -> None:
        calls = []

        def closure() -> Tensor:
            calls.append(1)
            opt.zero_grad()
            loss = loss_fn(model)
            loss.backward()
            if len(calls) == on_call:
                with torch.no_grad():
                    next(model.parameters()).add_(1.0)  # e.g. a stray optimizer step
            return loss

        opt.step(closure)

    return act


def _fails_on_perturbed_pass(model: nn.Module, loss_fn: Any, opt: AdaHessian) -> None:
    calls = []

    def closure() -> Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise KeyError("the data loader ran dry")
        opt.zero_grad()
        loss = loss_fn(model)
        loss.backward()
        return loss

    opt.step(closure)


def _no_closure(model: nn.Module, loss_fn: Any, opt: AdaHessian) -> None:
    opt.zero_grad()
    loss_fn(model).backward()
    opt.step()


def _opt_backward(model: nn.Module, loss_fn: Any, opt: AdaHessian) -> None:
    opt.backward(loss_fn(model))


def _scaler_without_closure(model: nn.Module, loss_fn: Any, opt: AdaHessian) -> None:
    opt.zero_grad()
    loss_fn(model).backward()
    opt.step(scaler=torch.amp.GradScaler("cpu"))


def _another_path(first: Callable[[Tensor], Tensor], other: Callable[[Tensor], Tensor]) -> Any:
    """The closure's perturbed pass applies ``other`` to the logits where the first pass applied
    ``first`` (data-dependent control flow): the activation pattern cannot be kept."""

    def act(model: nn.Module, loss_fn: Any, opt: AdaHessian) -> None:
        calls = []

        def closure() -> Tensor:
            calls.append(1)
            opt.zero_grad()
            apply = first if len(calls) == 1 else other
            loss = loss_fn(_Wrapped(model, apply))
            loss.backward()
            return loss

        opt.step(closure)

    return act


class _Wrapped(nn.Module):
    def __init__(self, model: nn.Module, after: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.model, self.after = model, after

    def forward(self, x: Tensor) -> Tensor:
        return self.after(self.model(x))


FD_CASES = [
    (
        "closure-returns-none",
        _returns_none,
        FiniteDifferenceError,
        r"closure returned None at θ: it must return the loss",
    ),
    (
        "closure-without-backward",
        _no_backward,
        FiniteDifferenceError,
        r"left no gradient .* must call loss\.backward\(\)",
    ),
    (
        "closure-changes-params-at-theta",
        _changes_params(1),
        FiniteDifferenceError,
        r"changed the parameters at θ .*put back",
    ),
    (
        "closure-changes-params-perturbed",
        _changes_params(2),
        FiniteDifferenceError,
        r"changed the parameters on a perturbed pass",
    ),
    ("closure-fails-on-perturbed-pass", _fails_on_perturbed_pass, KeyError, r"ran dry"),
    (
        "hessian-step-without-closure",
        _no_closure,
        RuntimeError,
        r"is a Hessian step and AdaHessian\(hvp='finite-difference'\) needs the closure",
    ),
    (
        "opt-backward",
        _opt_backward,
        RuntimeError,
        r"opt\.backward\(loss\) takes double-backward products .* inside the closure",
    ),
    (
        "perturbed-pass-meets-another-kink",
        _another_path(torch.relu, lambda t: F.leaky_relu(t, 0.1)),
        FiniteDifferenceError,
        r"took another path than the first: kink 1 is a leaky_relu\(0\.1\) on \(\d+, \d+\) where "
        r"the first pass had a relu",
    ),
    (
        "perturbed-pass-meets-a-kink-of-another-shape",
        _another_path(torch.relu, lambda t: torch.relu(t[:, :1])),
        FiniteDifferenceError,
        r"kink 1 is a relu on \(\d+, 1\) where the first pass had a relu on \(\d+, \d+\)",
    ),
    (
        "perturbed-pass-meets-more-kinks",
        _another_path(lambda t: t, torch.relu),
        FiniteDifferenceError,
        r"met more kinks than the first pass \(0\): kink 1 is a relu",
    ),
    (
        "perturbed-pass-meets-fewer-kinks",
        _another_path(torch.relu, lambda t: t),
        FiniteDifferenceError,
        r"met 0 kinks where the first pass met 1: the closure must take the same path",
    ),
    (
        "scaler-without-closure",
        _scaler_without_closure,
        ValueError,
        r"step\(scaler=\.\.\.\) is for a closure that scales its own loss",
    ),
]


@pytest.mark.parametrize(
    ("act", "error", "match"), [c[1:] for c in FD_CASES], ids=[c[0] for c in FD_CASES]
)
def test_bad_closures_raise_a_clear_error_and_change_nothing(
    act: Any, error: type[Exception], match: str
):
    model, loss_fn = noisy_setup()
    opt = AdaHessian(
        model.parameters(), lr=0.05, seed=0, update_interval=1, hvp="finite-difference"
    )
    for _ in range(2):
        opt.step(closure_of(model, loss_fn))
    before = snapshot(model, opt)
    with pytest.raises(error, match=match):
        act(model, loss_fn, opt)
    # The closure may have run once at θ (moving the running statistics as one ordinary forward
    # does, as with any optimizer): the parameters, state, counters and generator are unchanged.
    assert_same(snapshot(model, opt), before)
    # and the next good step is the one the failed call never affected
    twin_model, _ = noisy_setup()
    twin_model.load_state_dict(model.state_dict())
    twin = AdaHessian(twin_model.parameters(), lr=0.05, seed=0, hvp="finite-difference")
    twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    torch.manual_seed(11)
    opt.step(closure_of(model, loss_fn))
    torch.manual_seed(11)
    twin.step(closure_of(twin_model, loss_fn))
    for p, q in zip(model.parameters(), twin_model.parameters(), strict=True):
        assert torch.equal(p, q)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"hvp": "finite_difference"},
            r"Invalid hvp: 'finite_difference' \(must be one of 'autograd', 'finite-difference'\)",
        ),
        ({"hvp": None}, r"Invalid hvp: None"),
        ({"hvp": "finite-difference", "fd_eps": 0.0}, r"Invalid fd_eps: 0\.0 .*\(0, 1\]"),
        ({"hvp": "finite-difference", "fd_eps": -1e-3}, r"Invalid fd_eps: -0\.001"),
        ({"hvp": "finite-difference", "fd_eps": 2.0}, r"Invalid fd_eps: 2\.0"),
        ({"hvp": "finite-difference", "fd_eps": math.nan}, r"Invalid fd_eps: nan"),
        ({"hvp": "finite-difference", "fd_eps": True}, r"Invalid fd_eps: True"),
        ({"hvp": "finite-difference", "fd_eps": "1e-3"}, r"Invalid fd_eps: '1e-3'"),
        (
            {"hvp": "finite-difference", "fd_scheme": "backward"},
            r"Invalid fd_scheme: 'backward' \(must be one of forward, central\)",
        ),
    ],
    ids=[
        "hvp-unknown",
        "hvp-none",
        "eps-zero",
        "eps-negative",
        "eps-above-one",
        "eps-nan",
        "eps-bool",
        "eps-string",
        "scheme-unknown",
    ],
)
def test_bad_constructor_arguments_are_refused(kwargs: dict[str, Any], match: str):
    with pytest.raises(ValueError, match=match):
        AdaHessian(nn.Linear(2, 2).parameters(), **kwargs)


def test_sharded_parameters_are_refused_only_for_autograd():
    p = nn.Parameter(torch.ones(3))
    p._is_flat_param = True  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match=r"hvp='finite-difference'"):
        AdaHessian([p])
    AdaHessian([p], hvp="finite-difference")


def test_a_perturbed_gradient_that_overflows_skips_the_step_and_backs_the_scaler_off():
    """Under ``step(closure, scaler=...)``: g(θ) finite, g(θ + εv) inf (the scaled loss overflows
    just beside θ). The step is skipped with nothing changed, and the scaler, which saw finite
    gradients, is told: ``scaler.update()`` halves the scale as for any overflow."""
    model, loss_fn = smooth_model("tanh-mlp")
    opt = AdaHessian(model.parameters(), lr=0.05, seed=0, hvp="finite-difference")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    calls = []

    def closure() -> Tensor:
        calls.append(1)
        opt.zero_grad()
        loss = loss_fn(model)
        scaler.scale(loss).backward()
        if len(calls) == 2:  # the perturbed pass: as if the scaled gradient overflowed there
            next(model.parameters()).grad[0, 0] = math.inf
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    opt.step(closure, scaler=scaler)
    scaler.update()
    assert len(calls) == 2
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    assert opt.skipped_steps == 1 and not opt.state
    assert scaler.get_scale() == 2.0**9
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters()), "g(θ) kept"
    # The next step (calls 3 and 4: no overflow) is taken.
    opt.step(closure, scaler=scaler)
    scaler.update()
    assert opt.state_dict()["adahessian"]["hessian_updates"] == 1
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
