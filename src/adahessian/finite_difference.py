"""Hutchinson's estimate from ordinary gradients: finite-difference Hessian-vector products.

A Hessian-vector product does not need second derivatives:

.. math::

    Hv &= \\frac{g(\\theta + \\varepsilon v) - g(\\theta)}{\\varepsilon} + O(\\varepsilon)
        \\qquad\\text{(forward difference)} \\\\
    Hv &= \\frac{g(\\theta + \\varepsilon v) - g(\\theta - \\varepsilon v)}{2\\varepsilon}
        + O(\\varepsilon^2) \\qquad\\text{(central difference)}

where :math:`g` is the gradient that an ordinary ``loss.backward()`` computes. The forward
difference reuses the step's own gradient :math:`g(\\theta)`, so each probe costs one more forward
and backward pass (the central difference: two). Nothing is differentiated twice: the products run
wherever ``backward()`` runs (fused attention kernels, FSDP, compiled models, activation
checkpointing), and no gradient graph is kept.

The gradients come from a *closure*, the ordinary one of ``torch.optim``: it zeroes the gradients,
computes the loss, calls ``loss.backward()`` and returns the loss. The perturbed passes leave no
trace:

* the parameters are put back bit for bit (copied back, not subtracted);
* ``p.grad`` holds :math:`g(\\theta)` afterwards;
* every module buffer that a perturbed pass could change (BatchNorm's running statistics) is put
  back, so the buffers are as after the one forward at :math:`\\theta`;
* the global random state (CPU and the parameters' CUDA devices) is rewound before each perturbed
  pass, so dropout draws the same masks as at :math:`\\theta`, and is left as after that one
  forward.

**Choosing ε** (:func:`default_eps`). Rounding error grows like :math:`u / \\varepsilon` (``u``
the unit roundoff of the dtype the gradient is *computed* in) and truncation error like
:math:`\\varepsilon` (forward) or :math:`\\varepsilon^2` (central); the step moves each
coordinate by exactly :math:`\\pm\\varepsilon`. Under ``torch.autocast`` the parameters are float32
but the gradient is computed in float16/bfloat16: pass the compute dtype's ε (``eps=``).

**ReLU networks** are piecewise linear. A unit that switches sides inside the step adds a spike
of about :math:`1/\\varepsilon` that autodiff's Hessian (and the paper's AdaHessian) ignores, and
the quotient does not converge to autodiff's product as ε shrinks. By default the perturbed passes
therefore keep the first pass's *activation pattern* (:mod:`adahessian.pattern`: ReLU,
LeakyReLU, Hardtanh/ReLU6, max pooling), and the quotient converges as :math:`O(\\varepsilon)` /
:math:`O(\\varepsilon^2)` on them too (``keep_pattern=False``: the loss's curvature smoothed at
scale ε; then keep ε at least 1e-3 in float32).

This module knows nothing about optimizers; :class:`adahessian.AdaHessian` uses it with
``hvp="finite-difference"``.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.nn.modules.module import register_module_forward_pre_hook

from ._checks import FiniteDifferenceError
from .functional import state_dtype
from .pattern import ActivationPatternError, Pattern, PatternMode

__all__ = [
    "SCHEMES",
    "ActivationPatternError",
    "FiniteDifferenceError",
    "FirstPass",
    "RandomState",
    "default_eps",
    "finite_difference_diagonal",
    "finite_difference_products",
]

SCHEMES = ("forward", "central")

# ε per dtype the gradient is computed in (measured: docs/finite-difference.md). With the first
# pass's activation pattern kept (the default), float32 takes 1e-4: the quotient's error is then
# rounding plus truncation, as for a smooth model. Without it, a ReLU network's kinks inside the
# step dominate below 1e-3 (1e-4 cost a ResNet20 about 20 points).
_DEFAULT_EPS = {
    torch.float64: 1e-5,
    torch.float32: 1e-4,
    torch.float16: 1e-2,
    torch.bfloat16: 1e-2,
}
_DEFAULT_EPS_PATTERN_FREE = {torch.float32: 1e-3}


def default_eps(dtype: torch.dtype, scheme: str = "forward", keep_pattern: bool = True) -> float:
    """The default step ε for gradients computed in ``dtype``; the central difference's
    truncation error is :math:`O(\\varepsilon^2)`, so it takes a larger one in float64; without
    the activation pattern kept (``keep_pattern=False``) float32 takes 1e-3.

    Args:
        dtype: the dtype the gradient is computed in (under autocast: the compute dtype).
        scheme: ``"forward"`` or ``"central"``.
        keep_pattern: whether the perturbed passes keep the first pass's activation pattern.

    Returns:
        ε: float64 1e-5 (central 1e-4), float32 1e-4 (1e-3 with ``keep_pattern=False``),
        float16 and bfloat16 1e-2.

    Raises:
        ValueError: an unknown ``scheme``, or a dtype with no default (pass ε explicitly).
    """
    check_scheme(scheme)
    if dtype not in _DEFAULT_EPS:
        raise ValueError(f"no default finite-difference eps for {dtype}: pass eps= explicitly")
    if scheme == "central" and dtype == torch.float64:
        return 1e-4
    if not keep_pattern and dtype in _DEFAULT_EPS_PATTERN_FREE:
        return _DEFAULT_EPS_PATTERN_FREE[dtype]
    return _DEFAULT_EPS[dtype]


def check_scheme(scheme: Any) -> str:
    if scheme not in SCHEMES:
        raise ValueError(f"Invalid fd_scheme: {scheme!r} (must be one of {', '.join(SCHEMES)})")
    return str(scheme)


def check_eps(eps: Any) -> float | None:
    """None (the dtype's default) or a finite number in (0, 1]."""
    if eps is None:
        return None
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < eps <= 1.0:
        raise ValueError(
            f"Invalid fd_eps: {eps!r} (must be None for the dtype's default, or a number in "
            "(0, 1]; 1e-4 suits float32, 1e-3 without the activation pattern)"
        )
    return float(eps)


def params_eps(params: Sequence[Tensor], scheme: str, keep_pattern: bool = True) -> float:
    """One ε for all parameters: the largest default among their dtypes (the step must be the
    same for every coordinate for the quotient to be a Hessian-vector product)."""
    return max(default_eps(p.dtype, scheme, keep_pattern) for p in params)


class RandomState:
    """The global random state of the CPU and of the given CUDA devices, to rewind to."""

    def __init__(self, tensors: Sequence[Tensor]) -> None:
        self.cuda_devices = sorted(
            {t.device.index or 0 for t in tensors if t.device.type == "cuda"}
        )
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.cuda_devices]

    def restore(self) -> None:
        torch.set_rng_state(self.cpu)
        for d, state in zip(self.cuda_devices, self.cuda, strict=True):
            torch.cuda.set_rng_state(state, d)


_COMPILED_HOOK_WARNING = "Using `torch.compile(module)` when there are global hooks"


class _BufferSaver:
    """What one :func:`buffers_kept` block saved: each buffer with its copy, and the modules
    whose buffers are saved."""

    def __init__(self) -> None:
        self.saved: dict[int, tuple[Tensor, Tensor]] = {}
        self.seen: set[int] = set()

    def save(self, module: torch.nn.Module) -> None:
        if id(module) in self.seen:
            return
        for m in module.modules():
            self.seen.add(id(m))
        for b in module.buffers():
            if id(b) not in self.saved:
                self.saved[id(b)] = (b, b.detach().clone())

    def restore(self) -> None:
        with torch.no_grad():
            for b, copy in self.saved.values():
                b.copy_(copy)


_SAVERS: list[_BufferSaver] = []  # the open buffers_kept blocks, innermost last
_HOOK_KEY: list[int] = []  # the key of the hook below in torch's global forward pre-hooks


def _save_buffers(module: torch.nn.Module, _: Any) -> None:
    # Inside a compiled model the hook is traced: its wrapper, called eagerly, saved them.
    if torch.compiler.is_compiling() or not _SAVERS:
        return
    _SAVERS[-1].save(module)


@contextmanager
def buffers_kept() -> Iterator[None]:
    """Put back every buffer of every module called inside the block as it was before the
    call (BatchNorm's running statistics, ``num_batches_tracked``). The modules are found by a
    global forward pre-hook: the first module called (the model) saves all of its buffers.

    The hook is one function under one key of torch's global hook table, each time it is
    installed: a compiled model that traces the hooks then finds the same hooks on every pass
    and is not compiled again."""
    saver = _BufferSaver()
    hooks = torch.nn.modules.module._global_forward_pre_hooks
    if _HOOK_KEY and _HOOK_KEY[0] not in hooks:
        hooks[_HOOK_KEY[0]] = _save_buffers
        installed = True
    elif not _HOOK_KEY:
        _HOOK_KEY.append(register_module_forward_pre_hook(_save_buffers).id)
        installed = True
    else:
        installed = False  # a block is open already (nested)
    _SAVERS.append(saver)
    try:
        with warnings.catch_warnings():
            # A compiled model warns that a global hook fires once more for its wrapper: harmless.
            warnings.filterwarnings("ignore", message=re.escape(_COMPILED_HOOK_WARNING))
            yield
    finally:
        _SAVERS.pop()
        if installed:
            hooks.pop(_HOOK_KEY[0], None)
        saver.restore()


def _versions(params: Sequence[Tensor]) -> list[int]:
    return [p._version for p in params]


def check_closure_result(
    loss: Any, params: Sequence[Tensor], grads: Sequence[Tensor | None], where: str
) -> None:
    """A closure used for finite differences returns the loss and calls ``backward()``."""
    if loss is None:
        raise FiniteDifferenceError(
            f"the closure returned None {where}: it must return the loss, as in "
            "def closure(): opt.zero_grad(); loss = loss_fn(model(x), y); loss.backward(); "
            "return loss"
        )
    if not any(g is not None for g in grads):
        raise FiniteDifferenceError(
            f"the closure left no gradient on the parameters {where}: it must call "
            "loss.backward() (without create_graph), as in def closure(): opt.zero_grad(); "
            "loss = loss_fn(model(x), y); loss.backward(); return loss"
        )


def closure_changed_params(where: str) -> FiniteDifferenceError:
    return FiniteDifferenceError(
        f"the closure changed the parameters {where} (in place): a finite-difference step needs "
        "a closure that only zeroes the gradients, computes the loss and calls backward(); the "
        "parameters were put back"
    )


@dataclass
class FirstPass:
    """The closure's call at :math:`\theta`, with what the perturbed passes need: the loss, the
    parameters as they were (bit-exact copies), the global random state before the call, the
    activation pattern it recorded (or None), and the gradients the parameters held before it
    (:meth:`restore_grads` puts them back when the step fails)."""

    loss: Any
    theta: list[Tensor]
    random_state: RandomState
    pattern: Pattern | None
    params: list[Tensor]
    grads_before: list[Tensor | None]

    def restore_grads(self) -> None:
        """Put back the gradients the parameters held before the closure's call (the tensors
        themselves: exact when the closure's ``zero_grad()`` set them to None, as by default)."""
        for p, g in zip(self.params, self.grads_before, strict=True):
            p.grad = g

    @classmethod
    def run(
        cls, closure: Callable[[], Any], params: Sequence[Tensor], *, keep_pattern: bool = False
    ) -> FirstPass:
        """Call the closure at :math:`\theta` and check its contract: it returns the loss,
        computes gradients and leaves the parameters as they were (else they are put back and
        :class:`FiniteDifferenceError` is raised). ``keep_pattern``: record the activation
        pattern (:mod:`adahessian.pattern`) for the perturbed passes to keep."""
        params = list(params)
        before = RandomState(params)
        theta = [p.detach().clone() for p in params]
        versions = _versions(params)
        pattern = Pattern() if keep_pattern else None
        first = cls(None, theta, before, pattern, params, [p.grad for p in params])
        with torch.enable_grad(), _pattern_mode(pattern, replay=False):
            first.loss = closure()
        try:
            if _versions(params) != versions:
                with torch.no_grad():
                    for p, t in zip(params, theta, strict=True):
                        p.copy_(t)
                raise closure_changed_params("at θ")
            check_closure_result(first.loss, params, [p.grad for p in params], "at θ")
        except FiniteDifferenceError:
            first.restore_grads()
            raise
        return first


@contextmanager
def _pattern_mode(pattern: Pattern | None, *, replay: bool) -> Iterator[None]:
    """Record (or replay) ``pattern`` around a pass; nothing for None."""
    if pattern is None:
        yield
        return
    mode = PatternMode(pattern, replay=replay)
    with mode:
        yield
    mode.finish()


def finite_difference_products(
    closure: Callable[[], Any],
    params: Sequence[Tensor],
    grads: Sequence[Tensor | None],
    directions: Sequence[Sequence[Tensor]],
    *,
    eps: float,
    scheme: str = "forward",
    first: FirstPass | None = None,
    estimate_dtype: Callable[[Tensor], torch.dtype] = state_dtype,
) -> list[Tensor]:
    """Hutchinson's estimate :math:`\\frac1n\\sum_i v_i \\odot H v_i` from finite differences of
    the closure's gradients, with the gradients ``grads`` = :math:`g(\\theta)` already computed.

    Args:
        closure: zeroes the gradients, computes the loss, calls ``loss.backward()`` and returns
            the loss (``torch.optim``'s closure); called ``len(directions)`` times (forward) or
            twice as often (central), each time at :math:`\\theta \\pm \\varepsilon v_i`.
        params: the tensors perturbed; :math:`H` is taken with respect to them.
        grads: :math:`g(\\theta)`, one entry per parameter (None: no gradient; such a parameter's
            estimate is zero). Left on ``p.grad`` afterwards.
        directions: the probes, one list shaped like ``params`` per sample.
        eps: the step; each coordinate moves by exactly ``eps`` times its probe entry.
        scheme: ``"forward"`` or ``"central"``.
        first: the closure's call at :math:`\\theta` (:meth:`FirstPass.run`): each perturbed pass
            starts from the random state before it (the same dropout masks), and the
            parameters are put back from its copies; when it recorded the activation pattern,
            the perturbed passes keep it. None: the state and parameters now, no pattern.
        estimate_dtype: the dtype of the quotient for a parameter (float32 for float16/bfloat16
            parameters, their own otherwise).

    Returns:
        One tensor per parameter: the signed estimate, in ``estimate_dtype``.

    On return, and when anything raises, the parameters are bit-identical to before the call,
    ``p.grad`` is ``grads``, the buffers are as before the call and the global random state is
    as it was when the call began.
    """
    check_scheme(scheme)
    if not 0.0 < eps < math.inf:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if len(grads) != len(params) or any(len(v) != len(params) for v in directions):
        raise ValueError("grads and each direction need one tensor per parameter")
    after_first = RandomState(params)
    before = first.random_state if first is not None else after_first
    theta = first.theta if first is not None else [p.detach().clone() for p in params]
    pattern = first.pattern if first is not None else None
    estimate = [torch.zeros_like(p, dtype=estimate_dtype(p)) for p in params]
    signs = (1.0,) if scheme == "forward" else (1.0, -1.0)
    try:
        for v in directions:
            sides = [
                _gradient_at(closure, params, theta, v, sign * eps, before, pattern)
                for sign in signs
            ]
            if scheme == "forward":
                plus, minus = sides[0], list(grads)
            else:
                plus, minus = sides
            live = [i for i in range(len(params)) if plus[i] is not None or minus[i] is not None]
            es = [estimate[i] for i in live]
            with torch.no_grad():
                diff = _foreach(
                    "sub",
                    [_as(plus[i], estimate[i]) for i in live],
                    [_as(minus[i], estimate[i]) for i in live],
                )
                _foreach("addcmul_", es, [v[i].to(estimate[i].dtype) for i in live], diff)
    finally:
        _foreach("copy_", list(params), list(theta))
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        after_first.restore()
    width = eps * len(directions) * (1.0 if scheme == "forward" else 2.0)
    torch._foreach_div_(estimate, width)
    return estimate


def _as(g: Tensor | None, like: Tensor) -> Tensor:
    """``g`` in ``like``'s dtype (zeros for no gradient)."""
    return torch.zeros_like(like) if g is None else g.detach().to(like.dtype)


@torch.no_grad()
def _foreach(op: str, *lists: list[Tensor], **kwargs: Any) -> Any:
    """``torch._foreach_<op>`` over plain tensors; one op per tensor for DTensors (sharded
    parameters), whose foreach support varies."""
    if not lists[0]:
        return []
    if not any(type(t).__name__ == "DTensor" for t in lists[0]):
        return getattr(torch, f"_foreach_{op}")(*lists, **kwargs)
    out = [getattr(t, op)(*rest, **kwargs) for t, *rest in zip(*lists, strict=True)]
    return None if op.endswith("_") else out


def _gradient_at(
    closure: Callable[[], Any],
    params: Sequence[Tensor],
    theta: Sequence[Tensor],
    direction: Sequence[Tensor],
    step: float,
    random_state: RandomState,
    pattern: Pattern | None,
) -> list[Tensor | None]:
    """:math:`g(\\theta + \\text{step} \\cdot v)`, the parameters and buffers put back after;
    the pass keeps ``pattern`` (None: its own kinks)."""
    _foreach("copy_", list(params), list(theta))
    _foreach(
        "add_",
        list(params),
        [v.to(p.dtype) for v, p in zip(direction, params, strict=True)],
        alpha=step,
    )
    versions = _versions(params)
    for p in params:
        p.grad = None  # the closure's zero_grad() must not touch g(θ)
    random_state.restore()
    with buffers_kept(), torch.enable_grad(), _pattern_mode(pattern, replay=True):
        loss = closure()
    grads = [p.grad for p in params]
    if _versions(params) != versions:
        raise closure_changed_params("on a perturbed pass")
    check_closure_result(loss, params, grads, "on a perturbed pass")
    return grads


def finite_difference_diagonal(
    closure: Callable[[], Any],
    params: Sequence[Tensor],
    *,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    eps: float | None = None,
    scheme: str = "forward",
    probes: Sequence[Sequence[Tensor]] | None = None,
    keep_pattern: bool = True,
) -> tuple[Any, list[Tensor]]:
    """Call the closure at :math:`\\theta` and return ``(loss, estimate)``: its loss and
    Hutchinson's estimate :math:`\\frac1n\\sum_i v_i \\odot H v_i` from finite differences.

    The probes are those :func:`adahessian.hutchinson_diagonal` draws from the same generator
    state (one :func:`adahessian.rademacher` call over ``params`` per sample), unless given.
    Afterwards ``p.grad`` holds :math:`g(\\theta)`, the parameters are bit-identical, the buffers
    and the global random state are as after one call of the closure. ``eps`` None: the
    parameters' dtype's :func:`default_eps`. ``keep_pattern``: the perturbed passes keep the
    first pass's activation pattern (:mod:`adahessian.pattern`), so that the estimate converges
    to autodiff's on ReLU and max-pooling networks.

    Args:
        closure: ``torch.optim``'s closure: zeroes the gradients, computes the loss, calls
            ``loss.backward()`` (no ``create_graph``) and returns the loss. Called once at
            :math:`\\theta` and once per probe at :math:`\\theta + \\varepsilon v` (central: also
            at :math:`\\theta - \\varepsilon v`).
        params: the tensors perturbed; the Hessian is taken with respect to them.
        n_samples: number of probes to average.
        generator: source of the probes; None uses PyTorch's default generator.
        eps: the step ε; None: :func:`default_eps` of the parameters' dtypes (the largest).
        scheme: ``"forward"`` (error :math:`O(\\varepsilon)`) or ``"central"``
            (:math:`O(\\varepsilon^2)`, twice the passes).
        probes: the probes to use instead of drawing them, one list shaped like ``params``
            per sample; ``n_samples`` and ``generator`` are then ignored.
        keep_pattern: keep the first pass's activation pattern in the perturbed passes.

    Returns:
        ``(loss, estimate)``: the closure's loss at :math:`\\theta`, and one tensor per
        parameter holding the signed estimate (float32 for float16/bfloat16 parameters).

    Raises:
        ValueError: a bad ``scheme``, ``eps``, ``keep_pattern`` or ``n_samples``.
        FiniteDifferenceError: the closure returns no loss, computes no gradient, or changes
            the parameters in place.
        ActivationPatternError: a perturbed pass meets other kinks than the first pass did
            (data-dependent control flow). On any error the parameters, ``p.grad``, the
            buffers and the global random state are put back.
    """
    from .hutchinson import check_n_samples, rademacher

    params = list(params)
    check_scheme(scheme)
    step = check_eps(eps) or params_eps(params, scheme, keep_pattern)
    if not isinstance(keep_pattern, bool):
        raise ValueError(f"keep_pattern must be True or False, got {keep_pattern!r}")
    first = FirstPass.run(closure, params, keep_pattern=keep_pattern)
    grads = [p.grad for p in params]
    if probes is None:
        check_n_samples(n_samples)
        probes = [rademacher(params, generator=generator) for _ in range(n_samples)]
    estimate = finite_difference_products(
        closure, params, grads, probes, eps=step, scheme=scheme, first=first
    )
    return first.loss, estimate
