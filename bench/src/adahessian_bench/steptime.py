"""The time axis of the report: the file of the step costs measured side by side before training
(``stepcost.measure`` writes it), and the time of a run's steps at those costs (``cost_time``).
Arithmetic only: it imports no task and no model."""

from __future__ import annotations

from typing import Any

from adahessian import functional

from . import optimizers

COST_FILE = "step_cost.json"


def hessian_steps(steps: int, hp: dict[str, Any]) -> int:
    """How many of the first ``steps`` steps of AdaHessian with hyperparameters ``hp`` take the
    Hessian: all of the first ``hessian_warmup``, then every ``update_interval``-th (the
    optimizer's ``hessian_due``)."""
    return functional.hessian_steps(
        steps, int(hp.get("update_interval", 1)), int(hp.get("hessian_warmup", 0))
    )


def cost_time(name: str, steps: int, hp: dict[str, Any], cost: dict[str, float]) -> float:
    """Seconds that ``steps`` training steps of optimizer ``name`` cost at the measured ``cost``
    (``{"hessian_step_s", "plain_step_s"}``)."""
    n_h = hessian_steps(steps, hp) if not optimizers.first_order(name) else steps
    return n_h * cost["hessian_step_s"] + (steps - n_h) * cost["plain_step_s"]
