"""The training step: one step of the training loop (forward, backward, optimizer step), taken by
the loop (``train.train_epoch``) and timed side by side by ``stepcost.measure``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch


def training_step(
    setup: Any,
    model: torch.nn.Module,
    optimizer: Any,
    batch: Any,
    average: Callable[[torch.nn.Module], None] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """One step of the training loop (``train.train_epoch``'s, and what ``stepcost.measure`` times):
    forward, backward (keeping the gradient's graph when AdaHessian's Hessian step is due),
    ``average(model)`` for a first-order optimizer's gradients if given (data-parallel runs:
    AdaHessian averages its own), optimizer step. Returns the loss and the batch's statistics.

    AdaHessian with ``hvp="finite-difference"`` takes its Hessian-vector products from ordinary
    gradients at θ + εv instead: its step is ``closure_step``."""
    if finite_difference(optimizer):
        return closure_step(setup, model, optimizer, batch)
    loss, stats = setup.loss(model, batch)
    optimizer.zero_grad(set_to_none=True)
    adahessian = hasattr(optimizer, "hessian_due")
    # The Hessian-vector product needs the graph of the gradient, when one is due.
    loss.backward(create_graph=adahessian and bool(optimizer.hessian_due))
    if average is not None and not adahessian:
        average(model)
    optimizer.step()
    return loss.detach(), stats


def finite_difference(optimizer: Any) -> bool:
    """Whether ``optimizer`` is an AdaHessian taking finite-difference Hessian-vector products."""
    return hasattr(optimizer, "hessian_due") and getattr(optimizer, "hvp", None) == (
        "finite-difference"
    )


def closure_step(
    setup: Any, model: torch.nn.Module, optimizer: Any, batch: Any
) -> tuple[torch.Tensor, dict[str, float]]:
    """``optimizer.step(closure)`` with the ordinary closure (zero the gradients, the batch's loss,
    ``backward()``, return the loss): the optimizer calls it once, and on a Hessian step once more
    per probe at θ + εv (twice for the central difference: θ ± εv), putting the parameters,
    buffers and random state back after. No gradient graph is kept. The loss and statistics
    returned are those of the first call, at θ. (Data-parallel runs: AdaHessian averages the
    gradients and estimates itself.)

    A loss that carries state from batch to batch (``Setup.loss.state``: the LSTM's hidden state)
    starts every call from the state the batch began with, and is left with the state after the
    first call: the perturbed passes change nothing that the next batch sees."""
    stateful = hasattr(setup.loss, "state")
    incoming = setup.loss.state if stateful else None
    first: list[tuple[torch.Tensor, dict[str, float], Any]] = []

    def closure() -> torch.Tensor:
        if stateful:
            setup.loss.state = incoming
        optimizer.zero_grad(set_to_none=True)
        loss, stats = setup.loss(model, batch)
        loss.backward()
        if not first:
            first.append((loss.detach(), stats, setup.loss.state if stateful else None))
        return loss

    optimizer.step(closure)
    loss, stats, outgoing = first[0]
    if stateful:
        setup.loss.state = outgoing
    return loss, stats
