"""Bad input, one table: each case raises a clear error that names the argument and says what it
must be, and leaves the parameters, the gradients' graph, the optimizer's state, its counters,
its probe generator and the global RNG exactly as they were."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from adahessian import AdaHessian

F64 = torch.float64


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.fc = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.tanh(self.conv(x)).flatten(1))


def batch(seed: int) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(6, 1, 4, 4, generator=g, dtype=F64), torch.randint(0, 3, (6,), generator=g)


def backward(model: Net, seed: int, create_graph: bool = True) -> None:
    x, y = batch(seed)
    nn.functional.cross_entropy(model(x), y).backward(create_graph=create_graph)


@dataclass
class Warm:
    """A model and optimizer after two steps, with gradients (and their graph) for a third."""

    model: Net
    opt: AdaHessian

    @property
    def params(self) -> list[nn.Parameter]:
        return list(self.model.parameters())


@pytest.fixture
def warm() -> Warm:
    torch.manual_seed(0)
    model = Net().double()
    opt = AdaHessian(model.parameters(), lr=0.05, seed=0)
    for seed in range(2):
        opt.zero_grad()
        backward(model, seed, create_graph=opt.hessian_due)
        opt.step()
    opt.zero_grad()
    backward(model, 9)
    return Warm(model, opt)


def snapshot(w: Warm) -> dict[str, Any]:
    return {
        "params": [p.detach().clone() for p in w.params],
        "grads": [(p.grad.detach().clone(), p.grad.grad_fn is not None) for p in w.params],
        "state": copy.deepcopy(w.opt.state_dict()),
        "attrs": (w.opt.update_interval, w.opt.n_samples, w.opt.hessian_due, w.opt.probe_scale),
        "groups": len(w.opt.param_groups),
        "global_rng": torch.get_rng_state(),
    }


def assert_same(a: Any, b: Any) -> None:
    if isinstance(a, Tensor):
        assert isinstance(b, Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b))


def tampered(edit: Callable[[dict[str, Any]], Any]) -> Callable[[Warm], Any]:
    """A case that loads the optimizer's own state_dict after ``edit`` changed it."""

    def act(w: Warm) -> None:
        state = copy.deepcopy(w.opt.state_dict())
        edit(state)
        w.opt.load_state_dict(state)

    return act


def construct(**kwargs: Any) -> Callable[[Warm], Any]:
    return lambda w: AdaHessian(w.model.parameters(), **kwargs)


def construct_with(params: Callable[[Warm], Any]) -> Callable[[Warm], Any]:
    return lambda w: AdaHessian(params(w))


def assign(name: str, value: Any) -> Callable[[Warm], Any]:
    return lambda w: setattr(w.opt, name, value)


def step_with_hessian(make: Callable[[list[Tensor]], Any]) -> Callable[[Warm], Any]:
    return lambda w: w.opt.step(hessian=make(w.params))


def set_group(key: str, value: Any) -> Callable[[Warm], Any]:
    def act(w: Warm) -> None:
        w.opt.param_groups[0][key] = value
        try:
            w.opt.step()
        finally:
            w.opt.param_groups[0][key] = 0.05 if key == "lr" else None

    return act


def forgotten_graph(w: Warm) -> None:
    w.opt.zero_grad()
    backward(w.model, 9, create_graph=False)
    w.opt.step()


def sparse_grad(w: Warm) -> None:
    w.model.fc.weight.grad = w.model.fc.weight.grad.detach().to_sparse()
    w.opt.step()


def param_converted(w: Warm) -> None:
    bias = w.model.fc.bias
    grad = bias.grad.detach().float()
    bias.grad = None
    bias.data = bias.data.float()  # as model.float() would, after steps in float64
    bias.grad = grad
    w.opt.step()


def first_state(sd: dict[str, Any]) -> dict[str, Any]:
    return sd["state"][0]


def _set(d: dict[str, Any], key: str, value: Any) -> None:
    d[key] = value


def scale_first(name: str, factor: float) -> Callable[[dict[str, Any]], Any]:
    return lambda sd: first_state(sd)[name].mul_(factor)


@dataclass
class Case:
    id: str
    act: Callable[[Warm], Any]
    error: type[Exception]
    match: str  # names the argument and what it must be, or what to do


ints = torch.tensor([1, 2])

CASES = [
    # --- the curvature source (closure cases: test_finite_difference.py)
    Case("hvp-unknown", construct(hvp="fd"), ValueError, r"Invalid hvp: 'fd' \(must be one of 'au"),
    Case(
        "fd-eps-zero",
        construct(hvp="finite-difference", fd_eps=0.0),
        ValueError,
        r"Invalid fd_eps: 0\.0 \(must be None for the dtype's default, or a number in \(0, 1\]",
    ),
    Case(
        "fd-scheme-unknown",
        construct(hvp="finite-difference", fd_scheme="backward"),
        ValueError,
        r"Invalid fd_scheme: 'backward' \(must be one of forward, central\)",
    ),
    Case(
        "fd-keep-pattern-not-bool",
        construct(hvp="finite-difference", fd_keep_pattern=1),
        ValueError,
        r"fd_keep_pattern must be True or False, got 1",
    ),
    # --- hyperparameters
    Case("lr-negative", construct(lr=-0.1), ValueError, r"learning rate: -0\.1 .*must be .*>= 0"),
    Case("lr-string", construct(lr="0.1"), ValueError, r"learning rate: '0\.1' \(lr must be a num"),
    Case("lr-none", construct(lr=None), ValueError, r"learning rate: None \(lr must be a number"),
    Case("lr-nan", construct(lr=math.nan), ValueError, r"learning rate: nan .*finite"),
    Case("lr-inf", construct(lr=math.inf), ValueError, r"learning rate: inf .*finite"),
    Case(
        "lr-tensor-2", construct(lr=torch.tensor([0.1, 0.2])), ValueError, r"Tensor lr must be 1-"
    ),
    Case(
        "lr-int-tensor", construct(lr=torch.tensor(1)), ValueError, r"Tensor lr must have a float"
    ),
    Case("beta1-one", construct(betas=(1.0, 0.999)), ValueError, r"index 0: 1\.0 \(must be in \[0"),
    Case(
        "beta2-negative", construct(betas=(0.9, -0.1)), ValueError, r"index 1: -0\.1 \(must be in"
    ),
    Case(
        "betas-one", construct(betas=(0.9,)), ValueError, r"betas must be a pair \(beta1, beta2\)"
    ),
    Case("betas-float", construct(betas=0.9), ValueError, r"betas must be a pair"),
    Case(
        "betas-string", construct(betas=("0.9", 0.9)), ValueError, r"index 0: '0\.9' \(betas\[0\] "
    ),
    Case(
        "betas-mixed",
        construct(betas=(0.9, torch.tensor(0.99))),
        ValueError,
        r"betas must be either both floats or both Tensors",
    ),
    Case(
        "betas-tensor-2",
        construct(betas=(torch.tensor([0.9, 0.8]), torch.tensor(0.99))),
        ValueError,
        r"Tensor betas\[0\] must be 1-element",
    ),
    Case("eps-negative", construct(eps=-1e-8), ValueError, r"epsilon value: -1e-08 \(eps must be"),
    Case("eps-string", construct(eps="tiny"), ValueError, r"epsilon value: 'tiny' \(eps must be"),
    Case(
        "wd-negative", construct(weight_decay=-1), ValueError, r"weight_decay value: -1\.0 \(weig"
    ),
    Case(
        "wd-tensor",
        construct(weight_decay=torch.tensor(0.1)),
        ValueError,
        r"weight_decay must be a Python number, not a tensor",
    ),
    Case(
        "power-high", construct(hessian_power=1.5), ValueError, r"hessian_power: 1\.5 \(must be in"
    ),
    Case("power-low", construct(hessian_power=-0.5), ValueError, r"hessian_power: -0\.5 \(must be"),
    Case(
        "power-string", construct(hessian_power="1"), ValueError, r"hessian_power must be a number"
    ),
    Case("block-zero", construct(block_size=0), ValueError, r"block_size: 0 \(must be an integer"),
    Case(
        "block-float", construct(block_size=2.5), ValueError, r"block_size: 2\.5 \(must be an int"
    ),
    Case(
        "block-bool", construct(block_size=True), ValueError, r"block_size: True \(must be an int"
    ),
    Case(
        "spatial-str", construct(spatial_average="yes"), ValueError, r"spatial_average must be Tru"
    ),
    Case(
        "foreach-str", construct(foreach="fast"), ValueError, r"foreach must be None, True or Fal"
    ),
    Case(
        "interval-zero", construct(update_interval=0), ValueError, r"update_interval: 0 \(must be"
    ),
    Case(
        "interval-float", construct(update_interval=2.5), ValueError, r"update_interval: 2\.5 \(mu"
    ),
    Case(
        "n-samples-zero", construct(n_samples=0), ValueError, r"n_samples: 0 \(must be an integer"
    ),
    Case("seed-negative", construct(seed=-3), ValueError, r"seed: -3 \(must be None or an integer"),
    Case("seed-huge", construct(seed=2**70), ValueError, r"seed: \d+ \(must be None or an integer"),
    Case("seed-float", construct(seed=1.5), ValueError, r"seed: 1\.5 \(must be None or an integer"),
    Case(
        "clip-zero", construct(update_clip=0), ValueError, r"update_clip: 0\.0 \(must be None or a"
    ),
    Case(
        "clip-string", construct(update_clip="1"), ValueError, r"update_clip: '1' \(update_clip mu"
    ),
    Case("warmup-negative", construct(hessian_warmup=-1), ValueError, r"hessian_warmup: -1 \(must"),
    Case("warmup-float", construct(hessian_warmup=1.5), ValueError, r"hessian_warmup: 1\.5 \(must"),
    Case(
        "shared-probes-int", construct(shared_probes=1), ValueError, r"shared_probes must be True"
    ),
    # --- parameters
    Case("params-empty", construct_with(lambda w: []), ValueError, r"empty parameter list"),
    Case(
        "params-a-tensor",
        construct_with(lambda w: w.model.fc.weight),
        TypeError,
        r"params argument given to the optimizer should be an iterable of Tensors or dicts",
    ),
    Case(
        "param-integer",
        construct_with(lambda w: [nn.Parameter(ints, requires_grad=False)]),
        ValueError,
        r"parameter 0 of this group has dtype torch\.int64: .*convert it with \.float\(\)",
    ),
    Case(
        "param-complex",
        construct_with(lambda w: [nn.Parameter(torch.ones(2, dtype=torch.complex64))]),
        ValueError,
        r"complex parameters; optimise torch\.view_as_real\(p\) instead",
    ),
    Case(
        "param-twice",
        construct_with(lambda w: [w.model.fc.weight, w.model.fc.bias, w.model.fc.weight]),
        ValueError,
        r"parameter 2 of this group is the same tensor as parameter 0: list each parameter once",
    ),
    Case(
        "param-in-two-groups",
        construct_with(lambda w: [{"params": [w.model.fc.weight]}, {"params": w.params}]),
        ValueError,
        r"some parameters appear in more than one parameter group: parameter 2 of this group "
        r"is already in parameter group 0",
    ),
    Case(
        "param-on-meta-device",
        construct_with(lambda w: [nn.Parameter(torch.ones(3, device="meta"))]),
        ValueError,
        r"parameter 0 of this group is on the meta device, which holds no values: materialise",
    ),
    Case(
        "param-non-leaf",
        construct_with(lambda w: [w.model.fc.weight * 2]),
        ValueError,
        r"can't optimize a non-leaf Tensor",
    ),
    Case(
        "add-group-bad-power",
        lambda w: w.opt.add_param_group(
            {"params": [nn.Parameter(torch.ones(2))], "hessian_power": 2}
        ),
        ValueError,
        r"hessian_power: 2\.0 \(must be in \[0, 1\]",
    ),
    Case(
        "add-group-known-param",
        lambda w: w.opt.add_param_group({"params": [w.model.fc.bias]}),
        ValueError,
        r"already in parameter group 0",
    ),
    Case(
        "add-group-integer-tensor",
        lambda w: w.opt.add_param_group({"params": nn.Parameter(ints, requires_grad=False)}),
        ValueError,
        r"parameter 0 of this group has dtype torch\.int64",
    ),
    Case(
        "add-group-not-a-dict",
        lambda w: w.opt.add_param_group([w.model.fc.bias]),
        TypeError,
        r"param_group must be a dict",
    ),
    # --- settable attributes
    Case("set-interval-zero", assign("update_interval", 0), ValueError, r"update_interval: 0 \("),
    Case("set-interval-neg", assign("update_interval", -1), ValueError, r"update_interval: -1 \("),
    Case(
        "set-interval-float", assign("update_interval", 2.5), ValueError, r"update_interval: 2\.5"
    ),
    Case(
        "set-interval-str", assign("update_interval", "2"), ValueError, r"update_interval: '2' \("
    ),
    Case("set-warmup-negative", assign("hessian_warmup", -1), ValueError, r"hessian_warmup: -1"),
    Case("set-n-samples-zero", assign("n_samples", 0), ValueError, r"n_samples: 0 \(must be an in"),
    # --- step
    Case(
        "hessian-nan",
        step_with_hessian(lambda ps: [torch.full_like(p, math.nan) for p in ps]),
        ValueError,
        r"hessian\[0\] holds inf or NaN \(4 tensor\(s\) in all\): pass a finite estimate",
    ),
    Case(
        "hessian-inf",
        step_with_hessian(
            lambda ps: [p.detach() * 0 if i else p.detach() / 0 for i, p in enumerate(ps)]
        ),
        ValueError,
        r"hessian\[0\] holds inf or NaN \(1 tensor\(s\) in all\)",
    ),
    Case(
        "hessian-short",
        step_with_hessian(lambda ps: [torch.ones_like(p) for p in ps[:-1]]),
        ValueError,
        r"hessian has 3 tensors but 4 parameters have a gradient; pass one per parameter",
    ),
    Case(
        "hessian-shape",
        step_with_hessian(lambda ps: [torch.ones(3) for p in ps]),
        ValueError,
        r"hessian\[0\] has shape \(3,\) but its parameter has shape \(2, 1, 3, 3\)",
    ),
    Case(
        "hessian-a-tensor",
        step_with_hessian(lambda ps: torch.ones(3)),
        ValueError,
        r"hessian must be a list of tensors, one per parameter with a gradient",
    ),
    Case(
        "hessian-floats",
        step_with_hessian(lambda ps: [1.0 for p in ps]),
        ValueError,
        r"hessian\[0\] is float, not a tensor",
    ),
    Case(
        "hessian-complex",
        step_with_hessian(lambda ps: [torch.ones_like(p, dtype=torch.complex128) for p in ps]),
        ValueError,
        r"hessian\[0\] has dtype torch\.complex128: pass a real-valued estimate",
    ),
    Case(
        "forgotten-graph", forgotten_graph, RuntimeError, r"no gradient carries a graph.*create_g"
    ),
    Case("sparse-grad", sparse_grad, RuntimeError, r"sparse gradients; use nn\.Embedding\(sparse="),
    Case(
        "group-lr-string", set_group("lr", "x"), ValueError, r"parameter group 0: Invalid learnin"
    ),
    Case(
        "group-lr-overflows-the-parameter-dtype",
        set_group("lr", 1e308),
        ValueError,
        r"parameter group 0: lr 1e\+308 is too large for torch\.float64 parameters: a step "
        r"multiplies by lr / \(1 - beta1\) = inf",
    ),
    Case(
        "loss-scale-negative",
        lambda w: w.opt.step(loss_scale=-1.0),
        ValueError,
        r"Invalid loss_scale: -1\.0 \(must be finite and > 0\)",
    ),
    Case(
        "param-converted-after-steps",
        param_converted,
        RuntimeError,
        r"holds exp_avg of shape \(3,\) \(torch\.float64.*Move or convert the model before",
    ),
    # --- load_state_dict
    Case(
        "load-step-negative",
        tampered(lambda sd: _set(first_state(sd), "step", -1)),
        ValueError,
        r"state of parameter 0: step is -1, not an integer >= 0.*load the one that was saved",
    ),
    Case(
        "load-step-float",
        tampered(lambda sd: _set(first_state(sd), "step", 2.5)),
        ValueError,
        r"state of parameter 0: step is 2\.5, not an integer",
    ),
    Case(
        "load-hessian-step-ahead",
        tampered(lambda sd: _set(first_state(sd), "hessian_step", 7)),
        ValueError,
        r"hessian_step \(7\) exceeds step \(2\)",
    ),
    Case(
        "load-moment-shape",
        tampered(lambda sd: _set(first_state(sd), "exp_avg", torch.zeros(5, dtype=F64))),
        ValueError,
        r"exp_avg has shape \(5,\) but the parameter has shape \(2, 1, 3, 3\): .*another model",
    ),
    Case(
        "load-hessian-negative",
        tampered(scale_first("exp_hessian_diag_sq", -1.0)),
        ValueError,
        r"exp_hessian_diag_sq \(a mean of squares\) has negative entries",
    ),
    Case(
        "load-moment-nan",
        tampered(scale_first("exp_avg", math.nan)),
        ValueError,
        r"state of parameter 0: exp_avg holds inf or NaN",
    ),
    Case(
        "load-moment-missing",
        tampered(lambda sd: first_state(sd).pop("exp_avg")),
        ValueError,
        r"state of parameter 0: the state lacks \['exp_avg'\]",
    ),
    Case(
        "load-no-adahessian",
        tampered(lambda sd: sd.pop("adahessian")),
        ValueError,
        r"no 'adahessian' entry: it was not saved by AdaHessian\.state_dict\(\)",
    ),
    Case(
        "load-steps-negative",
        tampered(lambda sd: _set(sd["adahessian"], "steps", -4)),
        ValueError,
        r"'adahessian' entry of this state_dict: steps is -4, not an integer >= 0",
    ),
    Case(
        "load-updates-ahead",
        tampered(lambda sd: _set(sd["adahessian"], "hessian_updates", 9)),
        ValueError,
        r"hessian_updates exceeds steps",
    ),
    Case(
        "load-interval-zero",
        tampered(lambda sd: _set(sd["adahessian"], "update_interval", 0)),
        ValueError,
        r"Invalid update_interval: 0 \(must be an integer >= 1\)",
    ),
    Case(
        "load-warmup-negative",
        tampered(lambda sd: _set(sd["adahessian"], "hessian_warmup", -2)),
        ValueError,
        r"Invalid hessian_warmup: -2 \(must be an integer >= 0\)",
    ),
    Case(
        "load-seed-huge",
        tampered(lambda sd: _set(sd["adahessian"], "seed", 2**70)),
        ValueError,
        r"Invalid seed: \d+ \(must be None or an integer",
    ),
    Case(
        "load-probe-scale",
        tampered(lambda sd: _set(sd["adahessian"], "probe_scale", 3.0)),
        ValueError,
        r"probe_scale 3\.0 is not a power of two in \(0, 1\]",
    ),
    Case(
        "load-generator-garbage",
        tampered(
            lambda sd: _set(
                sd["adahessian"]["generator"], "state", torch.zeros(5, dtype=torch.uint8)
            )
        ),
        ValueError,
        r"probe generator's state is not one that torch\.Generator\.get_state\(\) returns",
    ),
    Case(
        "load-group-count",
        tampered(lambda sd: sd["param_groups"].append(dict(sd["param_groups"][0], params=[]))),
        ValueError,
        r"the state_dict has 2 parameter groups but this optimizer has 1",
    ),
    Case(
        "load-group-size",
        tampered(lambda sd: sd["param_groups"][0]["params"].pop()),
        ValueError,
        r"parameter group 0 has 4 parameters but the state_dict's has 3",
    ),
    Case(
        "load-group-lr",
        tampered(lambda sd: _set(sd["param_groups"][0], "lr", -1.0)),
        ValueError,
        r"Invalid learning rate: -1\.0",
    ),
    Case(
        "load-unknown-param",
        tampered(lambda sd: _set(sd["state"], 17, sd["state"][0])),
        ValueError,
        r"state for parameter 17, which no group lists",
    ),
    Case(
        "load-adam-state",
        lambda w: w.opt.load_state_dict(torch.optim.Adam(w.params).state_dict()),
        ValueError,
        r"no 'adahessian' entry",
    ),
    Case(
        "load-not-a-dict",
        lambda w: w.opt.load_state_dict([1, 2]),
        ValueError,
        r"state_dict must be a dict with 'state' and 'param_groups'",
    ),
]


def test_the_table_is_large_and_ids_are_unique():
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_raises_a_clear_error_and_changes_nothing(warm: Warm, case: Case):
    before = snapshot(warm)
    with pytest.raises(case.error, match=case.match):
        case.act(warm)
    after = snapshot(warm)
    # (a case that converted a parameter compares it in its new dtype)
    before["params"] = [
        q.to(p.dtype) for p, q in zip(after["params"], before["params"], strict=True)
    ]
    if case.id in ("forgotten-graph", "sparse-grad", "param-converted-after-steps"):
        after["grads"] = before["grads"]  # the case itself replaced the gradients
    assert_same(after, before)


@pytest.mark.parametrize(
    "case",
    [c for c in CASES if c.id.startswith(("hessian-", "group-", "loss-scale", "set-", "load-"))],
    ids=lambda c: c.id,
)
def test_the_step_after_a_refused_call_is_the_step_without_it(case: Case):
    torch.manual_seed(0)
    reference = []
    for refused in (False, True):
        torch.manual_seed(0)
        model = Net().double()
        opt = AdaHessian(model.parameters(), lr=0.05, seed=0)
        w = Warm(model, opt)
        for seed in range(3):
            opt.zero_grad()
            backward(model, seed, create_graph=opt.hessian_due)
            if refused and seed == 2:
                with pytest.raises(case.error):
                    case.act(w)
            opt.step()
        reference.append([p.detach().clone() for p in model.parameters()])
    assert_same(reference[1], reference[0])


def test_failure_inside_the_hessian_product_changes_nothing(warm):
    grads = [p.grad for p in warm.params]
    torch.autograd.grad(sum(g.sum() for g in grads), warm.params, allow_unused=True)
    before = snapshot(warm)  # the graph is gone: the product will fail after the draw
    with pytest.raises(RuntimeError, match="second time"):
        warm.opt.step()
    assert_same(snapshot(warm), before)  # probe generator state included


# ----------------------------------------------------------------------------- estimate hand-offs

HAND_OFFS = [
    ("bool", lambda ps: [torch.ones_like(p, dtype=torch.bool) for p in ps],
     r"add_hessian_estimate: estimate\[0\] has dtype torch\.bool: pass a floating-point"),
    ("int", lambda ps: [torch.ones_like(p, dtype=torch.int64) for p in ps],
     r"estimate\[0\] has dtype torch\.int64: pass a floating-point estimate"),
    ("another-device", lambda ps: [torch.ones_like(p, device="meta") for p in ps],
     r"estimate\[0\] is on meta but its parameter is on cpu: move it"),
    ("short", lambda ps: [torch.ones_like(p) for p in ps[:-1]],
     r"needs one tensor per parameter of hessian_probes\(\) \(4\), shaped like it; got 3"),
    ("one-tensor", lambda ps: torch.ones(3), r"the estimate must be a list of tensors"),
    ("wrong-shape", lambda ps: [torch.ones(2) for _ in ps],
     r"estimate\[0\] has shape \(2,\) but its parameter has shape \(2, 1, 3, 3\)"),
    ("not-a-tensor", lambda ps: [1.0 for _ in ps], r"estimate\[0\] is float, not a tensor"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("make", "match"), [h[1:] for h in HAND_OFFS], ids=[h[0] for h in HAND_OFFS]
)
def test_a_bad_estimate_hand_off_is_refused_at_the_call_with_nothing_added(
    warm: Warm, make: Callable[[list[Tensor]], Any], match: str
):
    opt = warm.opt
    opt.zero_grad()
    backward(warm.model, 9, create_graph=False)  # an estimate from elsewhere: no graph here
    params, _ = opt.hessian_probes()
    before = snapshot(warm)
    with pytest.raises(ValueError, match=match):
        opt.add_hessian_estimate(make(params))
    assert opt.hessian_estimate() is None
    assert_same(snapshot(warm), before)
    opt.add_hessian_estimate([torch.ones_like(p) for p in params])  # a good one still goes in
    opt.step()
    assert opt.state_dict()["adahessian"]["hessian_updates"] == 3


@pytest.mark.parametrize("value", [math.nan, math.inf], ids=["nan", "inf"])
def test_a_non_finite_handed_estimate_is_refused_by_the_step_without_a_grad_scaler(
    warm: Warm, value: float
):
    """NaN would turn every parameter into NaN, inf stall it for good; under a GradScaler such a
    step is skipped instead (test_amp_accumulation.py)."""
    opt = warm.opt
    opt.zero_grad()
    backward(warm.model, 9, create_graph=False)  # an estimate from elsewhere: no graph here
    params, _ = opt.hessian_probes()
    opt.add_hessian_estimate([torch.full_like(p, value) if i == 1 else torch.ones_like(p)
                              for i, p in enumerate(params)])  # fmt: skip
    before = snapshot(warm)
    held = [e.clone() for e in opt.hessian_estimate() or []]
    refused = r"holds inf or NaN in tensor 1 \(1 in all\), and no GradScaler is there to skip"
    with pytest.raises(ValueError, match=refused):
        opt.step()
    assert_same(snapshot(warm), before)
    for e, h in zip(opt.hessian_estimate() or [], held, strict=True):
        torch.testing.assert_close(e, h, rtol=0, atol=0, equal_nan=True)
    opt.zero_grad()  # drops the estimate, as the message says
    assert opt.hessian_estimate() is None
    backward(warm.model, 9, create_graph=False)
    params, _ = opt.hessian_probes()
    opt.add_hessian_estimate([torch.ones_like(p) for p in params])
    opt.step()
    assert all(torch.isfinite(p).all() for p in warm.params)


def test_a_schedule_that_overflows_float32_is_refused_before_anything_changes():
    torch.manual_seed(0)
    p = nn.Parameter(torch.randn(5))
    opt = AdaHessian([p], lr=0.05, seed=0)
    sched = torch.optim.lr_scheduler.MultiplicativeLR(opt, lambda epoch: 1e20)
    for _ in range(2):  # lr 0.05 -> 5e18 -> 5e38: finite, but lr / (1 - beta1) is not in float32
        opt.zero_grad()
        (p**4).sum().backward(create_graph=True)
        opt.step()
        sched.step()
    opt.zero_grad()
    (p**4).sum().backward(create_graph=True)
    before = (p.detach().clone(), copy.deepcopy(opt.state_dict()))
    with pytest.raises(ValueError, match=r"lr 5e\+38 is too large for torch\.float32 parameters"):
        opt.step()
    assert torch.equal(p, before[0])
    assert_same(opt.state_dict(), before[1])


def test_a_step_that_mixes_opt_backward_with_a_plain_graph_is_refused_with_nothing_changed():
    """Before: the accumulated estimate won and the graph's micro-batch got zero curvature."""
    torch.manual_seed(0)
    model = Net().double()
    opt = AdaHessian(model.parameters(), lr=0.05, seed=0)
    x, y = batch(1)
    opt.backward(nn.functional.cross_entropy(model(x), y))  # micro-batch 1: opt.backward
    backward(model, 2, create_graph=True)  # micro-batch 2: a plain graph
    params = list(model.parameters())
    before = ([p.detach().clone() for p in params], copy.deepcopy(opt.state_dict()))
    held = [e.clone() for e in opt.hessian_estimate() or []]
    mixed = r"gradients that carry a graph from a plain loss\.backward\(create_graph=True\)"
    with pytest.raises(RuntimeError, match=mixed):
        opt.step()
    assert all(torch.equal(p, q) for p, q in zip(params, before[0], strict=True))
    assert_same(opt.state_dict(), before[1])
    assert_same([e.clone() for e in opt.hessian_estimate() or []], held)


def test_a_failed_opt_backward_puts_the_probes_back():
    """A non-scalar loss: the step after it is the step the failed call never happened before."""

    def trained(fail: bool) -> list[Tensor]:
        torch.manual_seed(0)
        model = Net().double()
        opt = AdaHessian(model.parameters(), lr=0.05, seed=0)
        x, y = batch(1)
        if fail:
            with pytest.raises(
                RuntimeError, match="grad can be implicitly created only for scalar"
            ):
                opt.backward(model(x))
            assert all(p.grad is None for p in model.parameters())
        for _ in range(2):
            opt.zero_grad()
            opt.backward(nn.functional.cross_entropy(model(x), y))
            opt.step()
        return [p.detach().clone() for p in model.parameters()]

    for a, b in zip(trained(fail=True), trained(fail=False), strict=True):
        assert torch.equal(a, b)
