"""The probe scale: GradScaler's dynamic scaling, applied to the Hutchinson probes.

Under a ``torch.amp.GradScaler`` the Hessian-vector product is taken on the scaled loss and can
overflow where the gradient does not (so the scaler, which sees finite gradients, never backs
off). The optimizer then takes its next products on probes multiplied by :attr:`ProbeScaler.scale`
(a power of two, so dividing back is exact and the estimate unchanged): halved on every step whose
estimate alone overflowed, doubled again after ``growth_interval`` finite Hessian steps, as
GradScaler does with the loss scale.
"""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["MIN_SCALE", "ProbeScaler"]

MIN_SCALE = 2.0**-64
GROWTH_INTERVAL = 2000  # GradScaler's default growth_interval


class ProbeScaler:
    """The scale of the probes of scaled-loss Hessian-vector products (1 = unscaled)."""

    def __init__(self, scale: float = 1.0, growth: int = 0, growth_interval: int = GROWTH_INTERVAL):
        self.scale = scale
        self.growth = growth  # finite scaled Hessian steps since the last change
        self.growth_interval = growth_interval

    def backoff(self) -> None:
        """The estimate alone overflowed: halve the scale (down to :data:`MIN_SCALE`)."""
        self.growth = 0
        if self.scale > MIN_SCALE:
            self.scale /= 2
            return
        warnings.warn(
            "the Hessian estimate holds inf/NaN although the gradients are finite, even "
            f"with probes scaled by {MIN_SCALE}: the steps are skipped. Check the "
            "model for operations whose second derivative is not finite",
            stacklevel=4,
        )

    def grow(self) -> None:
        """A finite scaled Hessian step: after ``growth_interval`` of them, double the scale."""
        if self.scale >= 1.0:
            return
        self.growth += 1
        if self.growth >= self.growth_interval:
            self.scale *= 2
            self.growth = 0

    def state_dict(self) -> dict[str, Any]:
        return {"probe_scale": self.scale, "probe_scale_growth": self.growth}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """``state`` as checked by ``_checks.check_extra``."""
        self.scale = float(state["probe_scale"])
        self.growth = int(state["probe_scale_growth"])
