"""A deliberately plain reference implementation of the AdaHessian update.

It exists to check :class:`adahessian.AdaHessian` against: every quantity is computed out of place,
one parameter at a time, with the block averaging written as explicit loops over blocks. It shares
no code with the optimizer. It is slow; do not train with it.

It takes the Hessian-diagonal estimate from the caller (exact, or Hutchinson's), so the optimizer
can be checked on problems whose Hessian is known exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

__all__ = ["ReferenceAdaHessian", "reference_block_average"]


def reference_block_average(d: Tensor, block_size: int) -> Tensor:
    """Replace each entry of ``d`` with the mean of its block, by explicit loops.

    Args:
        d: an estimate shaped like its parameter.
        block_size: the block length along the last dimension of a rank-2 ``d``.

    Returns:
        A new tensor: the block means for rank 2, the mean over the dimensions after the first
        two for rank 3 and more, a copy of ``d`` otherwise.
    """
    out = d.clone()
    if d.dim() == 2 and block_size > 1:
        for r in range(d.shape[0]):
            for start in range(0, d.shape[1], block_size):
                stop = min(start + block_size, d.shape[1])
                out[r, start:stop] = d[r, start:stop].sum() / (stop - start)
    elif d.dim() >= 3:
        for i in range(d.shape[0]):
            for j in range(d.shape[1]):
                out[i, j] = d[i, j].sum() / d[i, j].numel()
    return out


@dataclass
class _ParamState:
    step: int = 0
    hessian_step: int = 0
    m: Tensor | None = None
    s: Tensor | None = None


@dataclass
class ReferenceAdaHessian:
    """Reference AdaHessian over ``groups``: a list of dicts, each with ``params`` (tensors that
    this object owns and updates in place) and any of ``lr``, ``betas``, ``eps``,
    ``weight_decay``, ``hessian_power``, ``block_size``, ``spatial_average``, ``update_clip``.

    Args:
        groups: the parameter groups, as above; a missing setting takes the optimizer's default.
        update_interval: estimate the Hessian every this many steps.
        hessian_warmup: the first this many steps are all Hessian steps.
        steps: the steps taken so far.
        states: the per-parameter moments and counters, by parameter index (filled by
            :meth:`step`).
    """

    groups: list[dict[str, Any]]
    update_interval: int = 1
    hessian_warmup: int = 0
    steps: int = 0
    states: dict[int, _ParamState] = field(default_factory=dict)

    defaults: ClassVar[dict[str, Any]] = dict(
        lr=0.15,
        betas=(0.9, 0.999),
        eps=1e-4,
        weight_decay=0.0,
        hessian_power=1.0,
        block_size=1,
        spatial_average=True,
        update_clip=None,
    )

    @property
    def hessian_due(self) -> bool:
        """True when the next :meth:`step` is a Hessian step (it needs ``diagonals``)."""
        if self.steps < self.hessian_warmup:
            return True
        return (self.steps - self.hessian_warmup) % self.update_interval == 0

    def step(
        self, grads: Sequence[Tensor | None], diagonals: Sequence[Tensor | None] | None
    ) -> None:
        """One step. ``grads`` has one entry per parameter (all groups, in order; None = no
        gradient). ``diagonals`` (same layout) holds the signed Hessian-diagonal estimates on a
        Hessian step and is None otherwise.

        Args:
            grads: the gradients, one entry per parameter.
            diagonals: the estimates on a Hessian step (:attr:`hessian_due`), None otherwise.
        """
        is_hessian_step = diagonals is not None
        k = 0
        for group in self.groups:
            opts = {**self.defaults, **{key: v for key, v in group.items() if key != "params"}}
            beta1, beta2 = opts["betas"]
            for p in group["params"]:
                g = grads[k]
                d_hat = diagonals[k] if diagonals is not None else None
                k += 1
                if g is None:
                    continue
                st = self.states.setdefault(id(p), _ParamState())
                if st.m is None or st.s is None:
                    st.m = torch.zeros_like(p)
                    st.s = torch.zeros_like(p)
                if not is_hessian_step and st.hessian_step == 0:
                    continue
                st.step += 1
                if is_hessian_step:
                    assert d_hat is not None
                    d = d_hat.abs()
                    if opts["spatial_average"]:
                        d = reference_block_average(d, opts["block_size"])
                    st.s = beta2 * st.s + (1 - beta2) * d * d
                    st.hessian_step += 1
                st.m = beta1 * st.m + (1 - beta1) * g
                m_hat = st.m / (1 - beta1**st.step)
                s_hat = st.s / (1 - beta2**st.hessian_step)
                denom = s_hat ** (opts["hessian_power"] / 2) + opts["eps"]
                preconditioned = m_hat / denom
                if opts["update_clip"] is not None:
                    c = opts["update_clip"]
                    preconditioned = torch.clamp(preconditioned, min=-c, max=c)
                update = preconditioned + opts["weight_decay"] * p
                with torch.no_grad():
                    p.copy_(p - opts["lr"] * update)
        self.steps += 1
