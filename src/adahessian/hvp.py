"""Other ways to get Hutchinson's estimate :math:`\\frac1n\\sum_i v_i \\odot H v_i`.

:func:`adahessian.hutchinson_diagonal` differentiates the gradient a second time
(*reverse-over-reverse*: ``loss.backward(create_graph=True)``, then one more backward per probe).
This module offers two alternatives with the same probes:

* :func:`forward_hutchinson` — *forward-over-reverse*: ``torch.func.jvp`` of
  ``torch.func.grad_and_value`` returns the loss, the gradient and :math:`Hv` from one call, and
  never builds a graph on ``p.grad``. Several probes share one forward and one gradient
  (``torch.func.vmap`` batches only the tangents).
* :func:`batched_hutchinson_diagonal` — reverse-over-reverse with all probes in one batched
  double backward (``torch.autograd.grad(..., is_grads_batched=True)``), a drop-in for
  :func:`adahessian.hutchinson_diagonal` when ``n_samples > 1``.

Both draw their probes exactly as :func:`adahessian.hutchinson_diagonal` does (one call of
:func:`adahessian.rademacher` over the parameters per sample, in order), so for the same
generator state all three return the same estimate up to rounding.

Known limitations in PyTorch 2.13 (checked by the tests):

* ``F.mse_loss`` with the default ``reduction="mean"`` fails under forward-over-reverse with
  "ZeroTensors are immutable" (write the loss as ``((out - y) ** 2).mean()`` instead), and
  ``F.huber_loss`` has no forward-mode derivative of its backward. :func:`forward_hutchinson`
  turns such failures into :class:`ForwardOverReverseError`, whose message points to the
  reverse-over-reverse path. ``LayerNorm``, ``BatchNorm``, ``GroupNorm``, ``Embedding``, GELU and
  math-backend attention work.
* ``torch.func.hessian`` / ``jacrev(jacrev(f))`` return a wrong, asymmetric Hessian for models with
  ``LayerNorm`` (the first backward is itself vmapped there); the products here do not vmap the
  first backward and agree with plain double backward.
* ``is_grads_batched=True`` fails on ``GroupNorm``'s double backward (a shape error in its
  batching rule); :func:`batched_hutchinson_diagonal` then raises a ``RuntimeError`` that names
  the loop (:func:`adahessian.hutchinson_diagonal`) as the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, jvp, vmap

from .hutchinson import check_n_samples, live_gradients, rademacher

__all__ = [
    "ForwardOverReverseError",
    "HutchinsonResult",
    "batched_hutchinson_diagonal",
    "forward_hutchinson",
]

_REVERSE_HINT = (
    "Use the reverse-over-reverse path instead: "
    "loss.backward(create_graph=opt.hessian_due); opt.step() "
    "(or adahessian.hutchinson_diagonal on torch.autograd.grad(loss, params, create_graph=True))."
)

# Messages of torch.func failures that say "this model/loss cannot go through the transform",
# as opposed to ordinary errors in the user's code, which are re-raised untouched.
_TRANSFORM_FAILURES = (
    "ZeroTensors are immutable",
    "forward AD",
    "forward-mode AD",
    "mutate a captured Tensor",
    "Batching rule not implemented",
    "vmap:",
    "functorch",
    "torch.func",
    "forward mode AD",
)


def is_transform_failure(error: BaseException, message: str | None = None) -> bool:
    """Whether ``error`` (or a cause of it) says that ``torch.func`` cannot transform the model or
    loss, as opposed to an ordinary error in the user's code."""
    text = message if message is not None else " ".join(str(e) for e in error_chain(error))
    return any(sig in text for sig in _TRANSFORM_FAILURES)


def error_chain(error: BaseException) -> list[BaseException]:
    """The error and its causes, outermost first."""
    out: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in out:
        out.append(current)
        current = current.__cause__ or current.__context__
    return out


@dataclass
class ModuleSplit:
    """A module's tensors as the functional transforms take them: the trainable parameters
    (``requires_grad``, in ``parameters()`` order, detached), the frozen ones and the buffers."""

    names: list[str]
    params: dict[str, Tensor]
    frozen: dict[str, Tensor]
    buffers: dict[str, Tensor]

    @classmethod
    def of(cls, model: nn.Module) -> ModuleSplit:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError("the model has no parameter with requires_grad=True")
        return cls(
            [n for n, _ in named],
            {n: p.detach() for n, p in named},
            {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad},
            dict(model.named_buffers()),
        )

    def tangents(self, probes: Sequence[Sequence[Tensor]]) -> dict[str, Tensor]:
        """The probes as ``jvp`` tangents: one probe as is, several stacked (for ``vmap``)."""
        if len(probes) == 1:
            return dict(zip(self.names, probes[0], strict=True))
        return {n: torch.stack([probe[i] for probe in probes]) for i, n in enumerate(self.names)}

    def write_back(self, state: dict[str, Tensor]) -> None:
        """Copy the buffers that the transform updated (running statistics) into the module."""
        with torch.no_grad():
            for n, b in self.buffers.items():
                b.copy_(state[n])


class ForwardOverReverseError(RuntimeError):
    """The model or loss cannot be differentiated forward-over-reverse by ``torch.func``."""


class HutchinsonResult(NamedTuple):
    """What :func:`forward_hutchinson` returns.

    Attributes:
        loss: the loss (a detached scalar tensor).
        grads: the gradient of the loss, one detached tensor per trainable parameter, in
            ``model.parameters()`` order.
        diagonal: the signed Hutchinson estimate :math:`\\frac1n\\sum_i v_i \\odot H v_i`, same
            order and shapes (pass it as ``opt.step(hessian=result.diagonal)``).
    """

    loss: Tensor
    grads: list[Tensor]
    diagonal: list[Tensor]


def functional_curvature(
    model: nn.Module,
    primals: dict[str, Tensor],
    frozen: dict[str, Tensor],
    buffers: dict[str, Tensor],
    inputs: tuple[Any, ...],
    loss_of_output: Callable[[Any], Tensor],
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """The forward-over-reverse pieces that ``forward_hutchinson`` and the compiled path share:
    ``grad_fn(params) -> (grads, (loss, buffers))`` (``torch.func.grad_and_value`` of the loss
    through ``functional_call``) and ``with_tangent(v) -> ((grads, loss, buffers), H v)`` at
    ``primals``. The buffers are cloned inside the transform, so BatchNorm may update its running
    statistics there; the module's own buffers are left for the caller to write back."""

    def loss_and_buffers(params: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        # Fresh copies made inside the transform may be updated in place (running statistics);
        # the module's own buffers, captured from outside, may not.
        state = {n: b.clone() for n, b in buffers.items()}
        out = functional_call(model, (params, frozen, state), inputs)
        return loss_of_output(out), state

    grad_fn = grad_and_value(loss_and_buffers, has_aux=True)

    def with_tangent(
        tangent: dict[str, Tensor],
    ) -> tuple[tuple[dict[str, Tensor], Tensor, dict[str, Tensor]], dict[str, Tensor]]:
        out: Any = jvp(grad_fn, (primals,), (tangent,))
        (grads, (loss, state)), (hvp, _) = out[0], out[1]
        return (grads, loss, state), hvp

    return grad_fn, with_tangent


def forward_hutchinson(
    model: nn.Module,
    loss_fn: Callable[[Any], Tensor],
    *inputs: Any,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    vectorize: bool = True,
) -> HutchinsonResult:
    """Loss, gradient and Hutchinson's Hessian-diagonal estimate, forward-over-reverse.

    Computes ``loss = loss_fn(model(*inputs))``, its gradient :math:`g` with respect to the
    trainable parameters (those with ``requires_grad``, in ``model.parameters()`` order) and
    :math:`\\frac1n\\sum_i v_i \\odot H v_i` with :math:`Hv = \\frac{d}{d\\epsilon}
    g(\\theta + \\epsilon v)` from ``torch.func.jvp(torch.func.grad_and_value(f))``. Nothing
    is written to ``p.grad``; use it as::

        res = forward_hutchinson(model, lambda out: criterion(out, y), x, generator=gen)
        for p, g in zip(trainable_params, res.grads):
            p.grad = g
        opt.step(hessian=res.diagonal)

    The probes are those :func:`adahessian.hutchinson_diagonal` draws from the same generator
    state: one :func:`adahessian.rademacher` call over the trainable parameters per sample.

    Buffers (BatchNorm's ``running_mean``, ``running_var``, ``num_batches_tracked``) are passed
    through the transform as explicit inputs and their updated values are copied back, so after
    the call they equal those after one ordinary forward in the model's current mode. The
    forward runs once whatever ``n_samples`` is, so random layers (dropout) draw once and every
    probe sees the same mask, as in reverse-over-reverse.

    Args:
        model: the module; called as ``model(*inputs)`` in its current train/eval mode.
        loss_fn: maps the model's output to a scalar loss (close over the targets).
        inputs: positional inputs of the model.
        n_samples: probes averaged.
        generator: source of the probes; None uses PyTorch's default generator.
        vectorize: with ``n_samples > 1``, batch the probes' tangents with ``torch.func.vmap``
            over one forward and one gradient (default). False loops over the probes instead,
            repeating the forward and gradient for each (the random state is rewound so that
            dropout draws the same mask each time); this is only useful for models whose
            operators have no vmap batching rule.

    Returns:
        A :class:`HutchinsonResult` ``(loss, grads, diagonal)``.

    On an error the module's buffers and ``generator`` are left as they were.

    Raises:
        ForwardOverReverseError: the model or loss cannot go through ``torch.func``'s
            forward-over-reverse (for example ``F.mse_loss`` with mean reduction, or
            ``F.huber_loss``, in torch 2.13); the message points to the reverse-over-reverse path.
        ValueError: ``n_samples < 1`` or the model has no trainable parameter.
    """
    check_n_samples(n_samples)
    split = ModuleSplit.of(model)
    names = split.names
    _, with_tangent = functional_curvature(
        model, split.params, split.frozen, split.buffers, inputs, loss_fn
    )

    params = list(split.params.values())
    generator_state = None if generator is None else generator.get_state()
    probes = [rademacher(params, generator=generator) for _ in range(n_samples)]
    try:
        if n_samples == 1 or vectorize:
            if n_samples == 1:
                (grads, loss, state), hvp = with_tangent(split.tangents(probes))
                hvps = [[hvp[n] for n in names]]
            else:
                batched = vmap(with_tangent, out_dims=(None, 0), randomness="same")  # type: ignore[arg-type]
                (grads, loss, state), hvp = batched(split.tangents(probes))
                hvps = [[hvp[n][k] for n in names] for k in range(n_samples)]
        else:
            rng = torch.get_rng_state()
            after = rng
            hvps = []
            for k in range(n_samples):
                if k > 0:
                    torch.set_rng_state(rng)  # the same dropout masks for every probe
                result, hvp = with_tangent(dict(zip(names, probes[k], strict=True)))
                if k == 0:
                    (grads, loss, state), after = result, torch.get_rng_state()
                hvps.append([hvp[n] for n in names])
            torch.set_rng_state(after)
    except (RuntimeError, NotImplementedError) as exc:
        if generator is not None and generator_state is not None:
            generator.set_state(generator_state)  # a failed call draws nothing
        message = str(exc)
        if not is_transform_failure(exc, message):
            raise
        raise ForwardOverReverseError(
            "forward-over-reverse Hessian-vector products (torch.func.jvp of "
            f"torch.func.grad) failed for this model or loss: {message.splitlines()[0]} "
            f"{_REVERSE_HINT}"
        ) from exc

    split.write_back(state)
    diagonal = [torch.zeros_like(p) for p in params]
    for probe, hv in zip(probes, hvps, strict=True):
        torch._foreach_addcmul_(diagonal, probe, hv)
    if n_samples > 1:
        torch._foreach_div_(diagonal, float(n_samples))
    return HutchinsonResult(loss.detach(), [grads[n] for n in names], diagonal)


def batched_hutchinson_diagonal(
    grads: Sequence[Tensor | None],
    params: Sequence[Tensor],
    *,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    retain_graph: bool = False,
) -> list[Tensor]:
    """:func:`adahessian.hutchinson_diagonal` with all probes in one batched double backward.

    Same arguments, probes and result as :func:`adahessian.hutchinson_diagonal` (the probes are
    drawn one :func:`adahessian.rademacher` call per sample, in order), but the ``n_samples``
    Hessian-vector products are one ``torch.autograd.grad(..., is_grads_batched=True)`` call,
    which vmaps the double backward over the stacked probes instead of looping over them.

    Args:
        grads: gradients computed with ``create_graph=True``, one per parameter (None or no
            graph: treated as constant), as for :func:`adahessian.hutchinson_diagonal`.
        params: the tensors the Hessian is taken with respect to.
        n_samples: number of probes, all in one batched double backward.
        generator: source of the probes; None uses PyTorch's default generator.
        retain_graph: keep the graph after the products (by default it is freed).

    Returns:
        One tensor per parameter: the signed estimate :math:`\\frac1n\\sum_i v_i \\odot H v_i`,
        as :func:`adahessian.hutchinson_diagonal` returns it.

    Raises:
        ValueError: as :func:`adahessian.hutchinson_diagonal`.
        RuntimeError: an operator's double backward has no working batching rule (``GroupNorm``
            in torch 2.13); the message says to use :func:`adahessian.hutchinson_diagonal`.
    """
    live = live_gradients(grads, params, n_samples)
    probes = [rademacher(params, generator=generator) for _ in range(n_samples)]
    outputs = [grads[i] for i in live]
    inputs = [params[i] for i in live]
    stacked = [torch.stack([probe[i] for probe in probes]) for i in live]
    try:
        hvps = torch.autograd.grad(
            outputs,  # type: ignore[arg-type]
            inputs,
            grad_outputs=stacked,
            retain_graph=retain_graph,
            allow_unused=True,
            is_grads_batched=True,
        )
    except RuntimeError as exc:
        raise RuntimeError(
            f"the batched double backward failed ({str(exc).splitlines()[0]}); some operator's "
            "double backward has no working vmap batching rule. Use "
            "adahessian.hutchinson_diagonal (one backward per probe) for this model."
        ) from exc
    estimate = [torch.zeros_like(p) for p in params]
    for i, v, hv in zip(live, stacked, hvps, strict=True):
        if hv is not None:
            estimate[i] = (v * hv.detach()).mean(0)
    return estimate
