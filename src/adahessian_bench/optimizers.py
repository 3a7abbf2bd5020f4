"""The optimizers compared, built from the hyperparameters of a profile's ``[optimizers.NAME]``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

OPTIMIZERS = ("sgd", "adam", "adamw", "adagrad", "adahessian")


def build(name: str, params: Iterable[torch.nn.Parameter], hp: dict[str, Any], seed: int):
    """An optimizer; ``hp`` holds the constructor's keyword arguments (lists become tuples)."""
    kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in hp.items()}
    if name == "sgd":
        return torch.optim.SGD(params, **kw)
    if name == "adam":
        return torch.optim.Adam(params, **kw)
    if name == "adamw":
        return torch.optim.AdamW(params, **kw)
    if name == "adagrad":
        return torch.optim.Adagrad(params, **kw)
    if name == "adahessian":
        from adahessian import AdaHessian  # the library under test

        # The probe (Rademacher) generator is seeded from the run's seed, so runs are repeatable.
        return AdaHessian(params, seed=seed, **kw)
    raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
