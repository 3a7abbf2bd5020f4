"""The compiled curvature path (:class:`CompiledCurvature`) against the eager paths, in float64.

Most tests compile with the ``aot_eager`` backend: it traces the same graph as inductor (dynamo,
``torch.func`` transforms, AOT autograd) in seconds and runs it with eager kernels, so random
operators draw as in eager mode. The inductor tests are marked slow where they compile long.
"""

from __future__ import annotations

import copy
import re
import textwrap
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import adahessian.compiled
from adahessian import (
    AdaHessian,
    CompiledCurvature,
    CompiledCurvatureError,
    ForwardOverReverseError,
    hutchinson_diagonal,
    rademacher,
    use_fast_batchnorm,
)

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = "aot_eager"


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _conv_bn(seed: int = 0, momentum: float | None = 0.3) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3),
        nn.BatchNorm2d(3),
        nn.Tanh(),
        nn.Conv2d(3, 2, 1),
        nn.BatchNorm2d(2, momentum=momentum),
        nn.Flatten(),
        nn.Linear(2 * 3 * 3, 3),
    ).double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    return model.train()


def _batches(n: int, size: int = 6, seed: int = 1) -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(size, 2, 5, 5, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (size,), generator=g),
        )
        for _ in range(n)
    ]


def _step_both(
    eager_model: nn.Module, eager_opt: AdaHessian, curv: CompiledCurvature, opt: AdaHessian,
    x: Tensor, y: Tensor,
) -> None:  # fmt: skip
    """One eager Hessian step (double backward) and one step through the compiled path."""
    eager_opt.zero_grad()
    F.cross_entropy(eager_model(x), y).backward(create_graph=True)
    eager_opt.step()
    opt.zero_grad()
    curv.backward(opt, x, y)
    opt.step()


def _assert_same_state(a: nn.Module, b: nn.Module) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-11, msg=name)


@pytest.mark.parametrize("n_samples", [1, 2])
@pytest.mark.parametrize("interval", [1, 3])
def test_steps_equal_the_eager_steps(n_samples: int, interval: int) -> None:
    eager_model, model = _conv_bn(), _conv_bn()
    kw = dict(lr=0.1, weight_decay=1e-3, n_samples=n_samples, update_interval=interval, seed=3)
    eager_opt = AdaHessian(eager_model.parameters(), **kw)  # type: ignore[arg-type]
    opt = AdaHessian(model.parameters(), **kw)  # type: ignore[arg-type]
    curv = CompiledCurvature(model, F.cross_entropy, backend=FAST)
    for x, y in _batches(5):
        eager_opt.zero_grad()
        eager_loss = F.cross_entropy(eager_model(x), y)
        eager_loss.backward(create_graph=eager_opt.hessian_due)
        hessian_step = eager_opt.hessian_due
        eager_opt.step()

        opt.zero_grad()
        loss = curv.backward(opt, x, y)
        assert (curv.estimate is not None) == hessian_step
        assert not loss.requires_grad
        opt.step()
        torch.testing.assert_close(loss, eager_loss.detach(), rtol=1e-12, atol=1e-12)
        _assert_same_state(eager_model, model)  # parameters and running statistics
    assert curv.compiles >= 1
    # The same probes were drawn: the generators are in the same state.
    assert torch.equal(eager_opt._probe_generator().get_state(), opt._probe_generator().get_state())
    for key in ("steps", "hessian_updates"):
        assert eager_opt.state_dict()["adahessian"][key] == opt.state_dict()["adahessian"][key]


def test_compiled_plain_steps_equal_the_eager_steps() -> None:
    eager_model, model = _conv_bn(), _conv_bn()
    eager_opt = AdaHessian(eager_model.parameters(), update_interval=3, seed=1)
    opt = AdaHessian(model.parameters(), update_interval=3, seed=1)
    curv = CompiledCurvature(model, F.cross_entropy, backend=FAST, compile_plain=True)
    for x, y in [*_batches(5), *_batches(1, size=4)]:  # the last batch runs uncompiled
        eager_opt.zero_grad()
        eager_loss = F.cross_entropy(eager_model(x), y)
        eager_loss.backward(create_graph=eager_opt.hessian_due)
        eager_opt.step()
        opt.zero_grad()
        loss = curv.backward(opt, x, y)
        opt.step()
        torch.testing.assert_close(loss, eager_loss.detach(), rtol=1e-12, atol=1e-12)
        _assert_same_state(eager_model, model)
    # Steps 1 and 4 are Hessian steps, 2, 3, 5 plain: one graph each, and the small batch
    # (step 6, plain) ran uncompiled.
    assert curv.compiles == 2 and curv.eager_calls == 1


def test_estimate_equals_double_backward_with_the_same_probes() -> None:
    model = _conv_bn()
    ((x, y),) = _batches(1)
    params = list(model.parameters())
    probes = [rademacher(params, generator=torch.Generator().manual_seed(s)) for s in (4, 5, 6)]
    ref_model = copy.deepcopy(model)
    grads = torch.autograd.grad(
        F.cross_entropy(ref_model(x), y), list(ref_model.parameters()), create_graph=True
    )
    expected = hutchinson_diagonal(grads, list(ref_model.parameters()), probes=probes)

    curv = CompiledCurvature(model, F.cross_entropy, backend=FAST)
    _, got_grads, estimate = curv.hutchinson(probes, x, target=y)
    torch.testing.assert_close(estimate, expected, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(got_grads, [g.detach() for g in grads], rtol=1e-10, atol=1e-12)
    assert all(p.grad is None for p in params)  # hutchinson() leaves p.grad alone
    _assert_same_state(ref_model, model)  # running statistics updated exactly once


class _Dropped(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.drop = nn.Linear(4, 8), nn.Linear(8, 3), nn.Dropout(0.5)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(self.drop(torch.tanh(self.a(x))))


@pytest.mark.parametrize("n_samples", [1, 2])
def test_dropout_gradient_and_products_see_the_forward_s_mask(n_samples: int) -> None:
    torch.manual_seed(0)
    model = _Dropped().double().train()
    x, y = torch.randn(7, 4, dtype=torch.float64), torch.randint(0, 3, (7,))
    params = list(model.parameters())
    probes = [
        rademacher(params, generator=torch.Generator().manual_seed(s)) for s in range(n_samples)
    ]
    curv = CompiledCurvature(model, F.cross_entropy, backend=FAST)
    torch.manual_seed(11)
    _, grads, estimate = curv.hutchinson(probes, x, target=y)
    torch.manual_seed(11)  # the same dropout mask in the eager reverse-over-reverse reference
    ref = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
    expected = hutchinson_diagonal(ref, params, probes=probes)
    torch.testing.assert_close(grads, [g.detach() for g in ref], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(estimate, expected, rtol=1e-10, atol=1e-12)
    torch.manual_seed(12)  # another mask gives another gradient: the mask is really applied
    other = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    assert not torch.allclose(other[0], grads[0])


def test_no_recompilation_for_a_small_last_batch_a_new_lr_or_eval() -> None:
    model = _conv_bn()
    eager_model = copy.deepcopy(model)
    opt = AdaHessian(model.parameters(), lr=0.1, seed=0)
    eager_opt = AdaHessian(eager_model.parameters(), lr=0.1, seed=0)
    curv = CompiledCurvature(model, F.cross_entropy, backend=FAST)
    batches = _batches(2, size=8)

    def steps(data: list[tuple[Tensor, Tensor]]) -> None:
        for x, y in data:
            _step_both(eager_model, eager_opt, curv, opt, x, y)

    steps(batches)  # the first call compiles
    assert curv.compiles == 1
    seconds = curv.compile_seconds
    assert seconds > 0
    with torch._dynamo.config.patch(error_on_recompile=True):
        last = _batches(1, size=5, seed=9)
        for o in (opt, eager_opt):
            for g in o.param_groups:
                g["lr"] = 0.05
        for m in (model, eager_model):
            m.eval()
            with torch.no_grad():
                m(last[0][0])
            m.train()
        steps([*batches, *last, *batches, *last])
    assert curv.compiles == 1 and curv.compile_seconds == seconds
    assert curv.eager_calls == 2  # the smaller batches ran uncompiled
    _assert_same_state(eager_model, model)


def test_second_instance_has_its_own_cache() -> None:
    # One instance's compiled graph does not count as another's recompilation.
    ((x, y),) = _batches(1)
    first = _conv_bn()
    curv = CompiledCurvature(first, F.cross_entropy, backend=FAST)
    probes = [rademacher(list(first.parameters()))]
    curv.hutchinson(probes, x, target=y)
    second = _conv_bn(seed=1)
    other = CompiledCurvature(second, F.cross_entropy, backend=FAST)
    with torch._dynamo.config.patch(error_on_recompile=True):
        other.hutchinson(probes, x, target=y)  # compiles: its first call
        other.hutchinson(probes, x, target=y)
        curv.hutchinson(probes, x, target=y)
    assert curv.compiles == 1 and other.compiles == 1


def test_micro_batches_share_the_probes_like_opt_backward() -> None:
    eager_model, model = _conv_bn(), _conv_bn()
    eager_opt = AdaHessian(eager_model.parameters(), n_samples=2, seed=5)
    opt = AdaHessian(model.parameters(), n_samples=2, seed=5)

    def half(out: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(out, y) / 2

    curv = CompiledCurvature(model, half, backend=FAST)
    for step in range(2):
        micro = _batches(2, size=4, seed=step)
        # A micro-batch discarded by zero_grad(): its estimate must not count.
        eager_opt.backward(half(eager_model(micro[1][0]), micro[1][1]))
        eager_opt.zero_grad()
        curv.backward(opt, *micro[1])
        opt.zero_grad()
        for x, y in micro:
            eager_opt.backward(half(eager_model(x), y))
            curv.backward(opt, x, y)
        eager_opt.step()
        opt.step()
        _assert_same_state(eager_model, model)


def test_estimate_follows_the_optimizer_s_group_order() -> None:
    eager_model, model = _conv_bn(), _conv_bn()

    def groups(m: nn.Module) -> list[dict]:
        params = list(m.parameters())  # the groups list them in another order
        return [{"params": params[4:]}, {"params": params[:4], "lr": 0.05}]

    eager_opt, opt = AdaHessian(groups(eager_model), seed=2), AdaHessian(groups(model), seed=2)
    curv = CompiledCurvature(model, F.cross_entropy, backend=FAST)
    for x, y in _batches(3):
        _step_both(eager_model, eager_opt, curv, opt, x, y)
    _assert_same_state(eager_model, model)


def test_module_docstring_example_runs() -> None:
    code = re.search(r"Usage.*?::\n\n(.*?)\n\n", adahessian.compiled.__doc__ or "", re.S)
    assert code is not None
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
    loader = [(torch.randn(8, 4), torch.randint(0, 3, (8,))) for _ in range(4)]
    loader.append((torch.randn(3, 4), torch.randint(0, 3, (3,))))  # a smaller last batch
    before = [p.detach().clone() for p in model.parameters()]
    namespace: dict = {
        "model": model,
        "criterion": nn.CrossEntropyLoss(),
        "loader": loader,
        "AdaHessian": AdaHessian,
        "CompiledCurvature": lambda *a, **k: CompiledCurvature(*a, backend=FAST, **k),
    }
    exec(textwrap.dedent(code.group(1)), namespace)
    opt, curv = namespace["opt"], namespace["curv"]
    assert opt.state_dict()["adahessian"]["hessian_updates"] == len(loader)
    assert curv.compiles == 1
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


# ---------------------------------------------------------------------------- refusals


def test_fast_batchnorm_is_refused_with_the_eager_path_named() -> None:
    model = use_fast_batchnorm(_conv_bn())
    with pytest.raises(CompiledCurvatureError, match=r"create_graph=opt.hessian_due"):
        CompiledCurvature(model, F.cross_entropy, backend=FAST)


class _Cube(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)  # type: ignore[attr-defined]
        return x**3

    @staticmethod
    def backward(ctx: object, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return 3 * x * x * g


class _WithCube(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return _Cube.apply(self.lin(x))


def _mse_mean(out: Tensor, y: Tensor) -> Tensor:
    return F.mse_loss(out, F.one_hot(y, 3).to(out.dtype))


class _CumulativeBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        # momentum=None divides by num_batches_tracked: a data-dependent value under compile
        self.net = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3, momentum=None))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: (_WithCube().double(), F.cross_entropy), id="custom-function"),
        pytest.param(lambda: (nn.Linear(4, 3).double(), _mse_mean), id="mse-mean"),
        pytest.param(
            lambda: (_CumulativeBatchNorm().double(), F.cross_entropy), id="bn-momentum-none"
        ),
    ],
)
def test_untransformable_models_raise_and_draw_nothing(
    make: Callable[[], tuple[nn.Module, Callable]],
) -> None:
    torch.manual_seed(0)
    model, loss_fn = make()
    opt = AdaHessian(model.parameters(), seed=0)
    state = opt._probe_generator().get_state()
    curv = CompiledCurvature(model, loss_fn, backend=FAST)
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.randint(0, 3, (5,))
    with pytest.raises(ForwardOverReverseError, match=r"eager path.*create_graph=opt\.hessian_due"):
        curv.backward(opt, x, y)
    assert torch.equal(opt._probe_generator().get_state(), state)
    assert all(p.grad is None for p in model.parameters())


def test_user_errors_are_not_disguised() -> None:
    model = nn.Linear(4, 3).double()
    curv = CompiledCurvature(model, F.cross_entropy, backend=FAST)
    probes = [rademacher(list(model.parameters()))]
    with pytest.raises(Exception) as info:
        curv.hutchinson(probes, torch.randn(5, 7, dtype=torch.float64), target=torch.zeros(5))
    assert not isinstance(info.value, CompiledCurvatureError)
    with pytest.raises(ValueError, match="one tensor per trainable parameter"):
        curv.hutchinson([probes[0][:1]], torch.randn(5, 4), target=torch.zeros(5))


# ---------------------------------------------------------------------------- inductor


@pytest.mark.slow
def test_inductor_estimate_equals_double_backward_in_float64() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.GELU(), nn.Linear(6, 3))
    model = model.double().train()
    x, y = torch.randn(9, 4, dtype=torch.float64), torch.randint(0, 3, (9,))
    params = list(model.parameters())
    probes = [rademacher(params, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    ref_model = copy.deepcopy(model)
    ref_params = list(ref_model.parameters())
    grads = torch.autograd.grad(F.cross_entropy(ref_model(x), y), ref_params, create_graph=True)
    expected = hutchinson_diagonal(grads, ref_params, probes=probes)

    curv = CompiledCurvature(model, F.cross_entropy)  # inductor
    for batch in (9, 5):  # a smaller batch does not recompile: it runs uncompiled
        _, got_grads, estimate = curv.hutchinson(probes, x[:batch], target=y[:batch])
        if batch == 9:
            torch.testing.assert_close(estimate, expected, rtol=1e-10, atol=1e-13)
            torch.testing.assert_close(got_grads, [g.detach() for g in grads])
            _assert_same_state(ref_model, model)
    assert curv.compiles == 1 and curv.compile_seconds > 0 and curv.eager_calls == 1


@pytest.mark.slow
def test_inductor_dropout_matches_eager_with_fallback_random() -> None:
    # Inductor draws its own random stream; with fallback_random it draws eager's, so the
    # compiled gradient and product can be checked against eager ones under the same seed.
    torch.manual_seed(0)
    model = _Dropped().double().train()
    x, y = torch.randn(7, 4, dtype=torch.float64), torch.randint(0, 3, (7,))
    params = list(model.parameters())
    probes = [rademacher(params, generator=torch.Generator().manual_seed(1))]
    with torch._inductor.config.patch(fallback_random=True):
        curv = CompiledCurvature(model, F.cross_entropy)
        for seed in (11, 12):
            torch.manual_seed(seed)
            _, grads, estimate = curv.hutchinson(probes, x, target=y)
            torch.manual_seed(seed)
            ref = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
            expected = hutchinson_diagonal(ref, params, probes=probes)
            torch.testing.assert_close(grads, [g.detach() for g in ref], rtol=1e-10, atol=1e-13)
            torch.testing.assert_close(estimate, expected, rtol=1e-10, atol=1e-13)
    assert curv.compiles == 1


# ----------------------------------------------------------------------------- what it trains


def _wrong_optimizer(kind: str) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = _conv_bn()
    if kind == "another-model":
        return model, AdaHessian(_conv_bn(seed=1).parameters(), seed=0)
    if kind == "a-parameter-of-the-loss":
        temperature = nn.Parameter(torch.ones((), dtype=torch.float64))
        return model, AdaHessian([*model.parameters(), temperature], seed=0)
    return model, torch.optim.Adam(model.parameters())


@pytest.mark.parametrize(
    ("kind", "error", "match"),
    [
        ("another-model", ValueError,
         r"none of the optimizer's parameters belongs to this CompiledCurvature's model"),
        ("a-parameter-of-the-loss", ValueError,
         r"trainable parameter 10 of the optimizer \(1 in all\) is not a parameter of the model: "
         r".*used inside loss_fn would never be trained"),
        ("not-adahessian", TypeError,
         r"needs the AdaHessian that steps the model, got Adam"),
    ],
)  # fmt: skip
def test_an_optimizer_that_does_not_step_this_model_is_refused_with_nothing_changed(
    kind: str, error: type[Exception], match: str
) -> None:
    model, opt = _wrong_optimizer(kind)
    curv = CompiledCurvature(model, F.cross_entropy, backend=FAST)
    before = copy.deepcopy(model.state_dict())
    steps = opt.state_dict().get("adahessian", {}).get("steps")
    ((x, y),) = _batches(1)
    with pytest.raises(error, match=match):
        curv.backward(opt, x, y)
    assert curv.compiles == 0 and all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert opt.state_dict().get("adahessian", {}).get("steps") == steps


def test_a_model_already_under_torch_compile_is_unwrapped_and_steps_as_eager() -> None:
    eager_model, model = _conv_bn(), _conv_bn()
    eager_opt = AdaHessian(eager_model.parameters(), lr=0.1, seed=3)
    opt = AdaHessian(model.parameters(), lr=0.1, seed=3)
    curv = CompiledCurvature(torch.compile(model, backend=FAST), F.cross_entropy, backend=FAST)
    assert curv.model is model
    for x, y in _batches(2):
        _step_both(eager_model, eager_opt, curv, opt, x, y)
        _assert_same_state(eager_model, model)
