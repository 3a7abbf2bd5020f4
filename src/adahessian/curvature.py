"""Where the Hessian-diagonal estimate of a step comes from: one small source each.

:meth:`adahessian.AdaHessian.step` picks the source of the step and asks it for the estimate of
the parameters that have gradients (in parameter-group order); it then unscales the estimate (for
a source that worked on the loss the gradients came from, which a GradScaler scales), averages it
over a process group and hands it to the update. A source raises before anything is changed.

* :class:`Given` — an estimate computed elsewhere, ``step(hessian=...)``;
* :class:`Accumulated` — the estimate that :meth:`adahessian.AdaHessian.backward` added up over
  the micro-batches of the step;
* :class:`OnGradientGraph` — Hutchinson's estimate from the graph that
  ``loss.backward(create_graph=True)`` left on ``p.grad``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from ._checks import check_hessian, nonfinite
from .functional import state_dtype
from .hutchinson import hutchinson_diagonal

__all__ = ["Accumulated", "Given", "OnGradientGraph", "Source"]

GRAPH_HINT = (
    "AdaHessian needs the gradient's graph on Hessian steps: call "
    "loss.backward(create_graph=opt.hessian_due) (or create_graph=True) before opt.step(). "
    "Frameworks that call backward() themselves need manual optimisation for this."
)


class Source(Protocol):
    #: True when the estimate was taken on the loss that the gradients came from (so a
    #: GradScaler's scale is in it, and the optimizer's probe scale applies to it).
    from_loss: bool

    def estimate(self, params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        """One estimate per tensor of ``params`` (the parameters with gradients ``grads``)."""
        ...


@dataclass
class Given:
    """An estimate computed elsewhere (exact diagonals, other estimators)."""

    hessian: Sequence[Tensor]
    finite: bool  # refuse inf/NaN (outside a GradScaler, which skips such a step instead)
    from_loss = False

    def estimate(self, params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        check_hessian(self.hessian, params, finite=self.finite)
        return [
            h.detach().to(device=p.device, dtype=state_dtype(p))
            for h, p in zip(self.hessian, params, strict=True)
        ]


@dataclass
class Accumulated:
    """The sum of the micro-batches' estimates, for ``probe_params`` (None: no micro-batch had
    a gradient that reached a parameter)."""

    probe_params: list[Tensor]
    total: list[Tensor] | None
    finite: bool = False  # refuse inf/NaN (outside a GradScaler, which skips such a step instead)
    from_loss = True

    def estimate(self, params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        if self.total is None:
            raise RuntimeError(
                "backward() ran on this Hessian step but no gradient reached a parameter with a "
                "graph; check that the loss depends on the optimised parameters"
            )
        if any(g.requires_grad for g in grads):
            raise RuntimeError(
                "this step has an estimate from opt.backward (or add_hessian_estimate, e.g. "
                "CompiledCurvature), and gradients that carry a graph from a plain "
                "loss.backward(create_graph=True): the graph's curvature would be dropped. Use "
                "one route per step: opt.backward(loss) for every micro-batch (or "
                "curv.backward for every one); nothing was changed"
            )
        if self.finite:
            bad = nonfinite(self.total)
            if bad:
                raise ValueError(
                    f"this step's Hessian estimate (from add_hessian_estimate, opt.backward or "
                    f"the finite-difference passes) holds inf or NaN in tensor {bad[0]} "
                    f"({len(bad)} in all), and no GradScaler is there to skip the step: nothing "
                    "was changed. opt.zero_grad() drops the estimate; take the step again with a "
                    "finite one (a smaller lr, or a GradScaler under fp16)"
                )
        return select(self.total, self.probe_params, params)


@dataclass
class OnGradientGraph:
    """Hutchinson's estimate, with probes for every parameter of ``probe_params`` drawn from
    ``generator`` (rewound if the product fails), taken with the optimizer's probe scale."""

    probe_params: list[Tensor]
    generator: torch.Generator
    n_samples: int
    probe_scale: float
    graph_kept: bool | None  # whether the last backward pass kept the graph (None: unknown)
    step: int
    from_loss = True

    def estimate(self, params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
        if not any(g.requires_grad for g in grads):
            if self.graph_kept:  # create_graph=True, yet the gradients are constant
                return [torch.zeros_like(p) for p in params]  # a linear loss: no curvature
            raise RuntimeError(
                f"step {self.step} is a Hessian step (opt.hessian_due is True) but no "
                f"gradient carries a graph. {GRAPH_HINT}"
            )
        grad_of = {id(p): g for p, g in zip(params, grads, strict=True)}
        all_grads = [grad_of.get(id(p)) for p in self.probe_params]
        rng_state = self.generator.get_state()
        try:
            all_estimates = hutchinson_diagonal(
                all_grads,
                self.probe_params,
                n_samples=self.n_samples,
                generator=self.generator,
                scale=self.probe_scale,
            )
        except BaseException:
            self.generator.set_state(rng_state)  # a failed step changes nothing
            raise
        return select(all_estimates, self.probe_params, params)


def select(values: list[Tensor], params: list[Tensor], wanted: list[Any]) -> list[Tensor]:
    """The entries of ``values`` (one per tensor of ``params``) for the tensors of ``wanted``;
    zeros for one that is not in ``params`` (a frozen parameter given a gradient by hand has no
    graph, hence no curvature)."""
    by_param = {id(p): v for p, v in zip(params, values, strict=True)}
    return [by_param[id(p)] if id(p) in by_param else torch.zeros_like(p) for p in wanted]
