"""Hutchinson's estimator of the Hessian diagonal.

For a twice-differentiable loss :math:`L(\\theta)` with Hessian :math:`H` and a Rademacher probe
:math:`v` (entries :math:`\\pm 1` with probability 1/2 each),

.. math::

    \\mathbb{E}_v[\\, v \\odot H v \\,] = \\operatorname{diag}(H),
    \\qquad
    \\operatorname{Var}[(v \\odot H v)_i] = \\sum_{j \\ne i} H_{ij}^2 .

One Hessian-vector product :math:`Hv` costs about one extra backward pass: it is the gradient of
:math:`g(\\theta)^\\top v` where :math:`g` is the gradient computed with ``create_graph=True``.

This module knows nothing about optimizers; :class:`adahessian.AdaHessian` uses it, and it can be
used on its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from .functional import state_dtype

__all__ = ["hutchinson_diagonal", "rademacher"]


def rademacher(
    tensors: Sequence[Tensor], *, generator: torch.Generator | None = None
) -> list[Tensor]:
    """Draw one Rademacher probe (entries exactly ``+1`` or ``-1``, each with probability 1/2)
    shaped like each tensor in ``tensors``, with its dtype and device.

    All entries come from a single draw of ``generator`` (on the generator's device, or the first
    tensor's device when ``generator`` is None), so the probes depend only on the generator's state
    and the tensors' sizes, not on how the tensors are later grouped.

    A DTensor (FSDP2 ``fully_shard``, tensor parallelism) gets a probe for this rank's shard only
    (drawn like a tensor shaped as ``t.to_local()``), returned as a DTensor with ``t``'s mesh and
    placements: each rank draws the probe of its own shard, from its own generator.

    Args:
        tensors: the tensors to draw probes for (usually the parameters).
        generator: the source of the draw; None uses PyTorch's default generator.

    Returns:
        One probe per tensor, with its shape, dtype and device (an empty list for no tensors).
    """
    if not tensors:
        return []
    local = [_local(t) for t in tensors]
    device = generator.device if generator is not None else local[0].device
    sizes = [t.numel() for t in local]
    bits = torch.randint(0, 2, (sum(sizes),), generator=generator, device=device, dtype=torch.int8)
    flat = bits.mul_(2).sub_(1)
    probes = [
        chunk.view(t.shape).to(device=t.device, dtype=t.dtype)
        for chunk, t in zip(flat.split(sizes), local, strict=True)
    ]
    return [
        v if loc is t else _like_dtensor(v, t)
        for v, loc, t in zip(probes, local, tensors, strict=True)
    ]


def _is_dtensor(t: Tensor) -> bool:
    return type(t).__name__ == "DTensor" and hasattr(t, "to_local")


def _local(t: Tensor) -> Tensor:
    """This rank's shard of a DTensor (the tensor itself otherwise)."""
    return t.to_local() if _is_dtensor(t) else t  # type: ignore[attr-defined]


def _like_dtensor(local: Tensor, like: Any) -> Tensor:
    """``local`` as this rank's shard of a DTensor laid out like ``like``."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        local,
        like.device_mesh,
        like.placements,
        run_check=False,
        shape=like.shape,
        stride=like.stride(),
    )


def check_n_samples(n_samples: int) -> None:
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples!r}")


def live_gradients(
    grads: Sequence[Tensor | None], params: Sequence[Tensor], n_samples: int
) -> list[int]:
    """Check the arguments shared by the Hutchinson estimators and return the indices of the
    gradients that carry a graph (the outputs the Hessian-vector products differentiate)."""
    if len(grads) != len(params):
        raise ValueError(f"got {len(grads)} gradients for {len(params)} parameters")
    check_n_samples(n_samples)
    live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    if not live:
        raise ValueError(
            "none of the gradients carries a graph, so no Hessian-vector product can be taken: "
            "compute them with loss.backward(create_graph=True) or "
            "torch.autograd.grad(loss, params, create_graph=True)"
        )
    return live


def hutchinson_diagonal(
    grads: Sequence[Tensor | None],
    params: Sequence[Tensor],
    *,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
    retain_graph: bool = False,
    probes: Sequence[Sequence[Tensor]] | None = None,
    scale: float = 1.0,
) -> list[Tensor]:
    """Unbiased estimate of the Hessian diagonal, :math:`\\frac1n \\sum_i v_i \\odot H v_i`.

    Args:
        grads: gradients of the loss with respect to ``params``, computed with
            ``create_graph=True`` (for example ``[p.grad for p in params]`` after
            ``loss.backward(create_graph=True)``, or the output of
            ``torch.autograd.grad(loss, params, create_graph=True)``). An entry that is None or has
            no graph is treated as constant: its rows and columns of :math:`H` count as zero and
            its estimate is zero.
        params: the tensors the Hessian is taken with respect to; the whole Hessian (including
            cross terms between different tensors) enters every product :math:`Hv`.
        n_samples: number of independent probes to average.
        generator: source of the probes; None uses PyTorch's default generator.
        retain_graph: keep the graph after the last product (by default it is freed as soon as
            the last Hessian-vector product is done).
        probes: the probes to use instead of drawing them: one list (shaped like ``params``) per
            sample; ``n_samples`` and ``generator`` are then ignored. Reusing the same probes for
            several micro-batches makes the sum of their estimates the estimate for the sum of
            their losses.
        scale: differentiate with the probes multiplied by ``scale`` and divide the products by
            it. The estimate is the same (exactly, for a power of two); a small scale keeps
            the intermediate values of a float16 product taken on a scaled loss (mixed
            precision) from overflowing.

    Returns:
        One tensor per parameter, shaped like it: the signed estimate (no absolute value, no
        averaging over blocks), in the parameter's dtype, or float32 for a float16 or bfloat16
        one. A parameter that the gradients' graph does not reach gets zeros.
        Probes are drawn for every parameter (live or not), so the random stream does not depend
        on which gradients carry a graph.

    Raises:
        ValueError: if the lengths differ, ``n_samples < 1``, no gradient carries a graph, or
            ``scale`` is below the smallest normal number of a parameter's dtype (the probes
            would underflow to zero).
    """
    if probes is not None:
        n_samples = len(probes)
        if any(len(v) != len(params) for v in probes):
            raise ValueError("each entry of probes needs one tensor per parameter")
    if not 0.0 < scale < float("inf"):
        raise ValueError(f"scale must be a finite number > 0, got {scale!r}")
    live = live_gradients(grads, params, n_samples)
    outputs = [grads[i] for i in live]
    inputs = [params[i] for i in live]
    for i in live:
        floor = torch.finfo(params[i].dtype).smallest_normal
        if scale < floor:
            raise ValueError(
                f"scale {scale:g} underflows the {params[i].dtype} probes (the smallest normal "
                f"number is {floor:g}): their products would be zero curvature. Under a "
                "GradScaler the probe scale backs off when the products overflow: here they "
                "overflow at every scale, so check the loss scale and the model in this dtype"
            )
    # The sum is formed in float32 for float16/bfloat16 parameters, as the moments are: v * Hv
    # and its division by the scale would overflow float16.
    estimate = [torch.zeros_like(p, dtype=state_dtype(p)) for p in params]
    for sample in range(n_samples):
        v = rademacher(params, generator=generator) if probes is None else probes[sample]
        keep = retain_graph or sample < n_samples - 1
        hvps = torch.autograd.grad(
            outputs,  # type: ignore[arg-type]
            inputs,
            grad_outputs=[v[i] for i in live] if scale == 1 else [v[i] * scale for i in live],
            retain_graph=keep,
            allow_unused=True,
        )
        for i, hv in zip(live, hvps, strict=True):
            if hv is not None:
                e = estimate[i]
                e.addcmul_(v[i].to(e.dtype), hv.detach().to(e.dtype))
    if n_samples * scale != 1:
        torch._foreach_div_(estimate, float(n_samples) * scale)
    return estimate
