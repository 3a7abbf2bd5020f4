"""The optimizers compared, built from the hyperparameters of a profile's ``[optimizers.NAME]``."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

OPTIMIZERS = ("sgd", "adam", "adamw", "adagrad", "adahessian")


def build(
    name: str,
    params: Iterable[torch.nn.Parameter],
    hp: dict[str, Any],
    seed: int,
    process_group: Any = None,
):
    """An optimizer; ``hp`` holds the constructor's keyword arguments (lists become tuples).

    With a ``process_group`` (data-parallel runs under torchrun), AdaHessian averages gradients
    and Hessian estimates across ranks itself; the first-order optimizers get their gradients
    averaged by the training loop (``train.average_gradients``)."""
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
        return AdaHessian(params, seed=seed, process_group=process_group, **kw)
    raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
