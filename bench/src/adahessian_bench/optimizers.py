"""The optimizers compared, built from the hyperparameters of a profile's ``[optimizers.NAME]``.

``NAME`` is one of ``OPTIMIZERS``, or a variant of one: ``KIND-LABEL`` (``adahessian-lazy``,
``adamw-lr2``, ``adahessian-fd-lazy``: the label may hold further ``-``) builds ``KIND`` with its
own table, so that one run can train the same optimizer in two settings side by side (AdaHessian
as the paper sets it, and in the recommended setup).

AdaHessian's ``hvp`` picks how a Hessian step takes its Hessian-vector products: ``"autograd"``
(the default: double backward) or ``"finite-difference"`` (two ordinary gradients, the step taken
as ``opt.step(closure)``: ``step.training_step``), with ``fd_eps`` (the step ε, in (0, 1];
left out: the default of the dtype), ``fd_scheme`` (``"forward"`` or ``"central"``) and
``fd_keep_pattern`` (true by default: the perturbed passes keep the first pass's ReLU and
max-pooling pattern). The constructor checks their values; ``check`` also refuses them without
``hvp = "finite-difference"``, where they would do nothing.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable
from typing import Any

import torch

from .hints import did_you_mean

OPTIMIZERS = ("sgd", "adam", "adamw", "adagrad", "adahessian")
SET_BY_BUILD = ("params", "seed", "process_group")  # not hyperparameters of a profile
VARIANT = re.compile(r"[a-z]+(-[a-z0-9_.]+)*")
# AdaHessian keys that only finite-difference Hessian-vector products use.
FINITE_DIFFERENCE_KEYS = ("fd_eps", "fd_scheme", "fd_keep_pattern")


def kind(name: str) -> str:
    """The optimizer ``NAME`` builds: itself, or ``KIND`` for a variant ``KIND-LABEL``.
    ValueError if it names none."""
    base = name.split("-", 1)[0]
    if base not in OPTIMIZERS or not VARIANT.fullmatch(name):
        raise ValueError(
            f"unknown optimizer {name!r}{did_you_mean(name, OPTIMIZERS)}; known: "
            f"{', '.join(OPTIMIZERS)}, or a variant KIND-LABEL of one (adahessian-lazy)"
        )
    return base


def is_known(name: str) -> bool:
    try:
        kind(name)
    except ValueError:
        return False
    return True


def first_order(name: str) -> bool:
    """Whether ``name`` builds a first-order optimizer (all but AdaHessian)."""
    return kind(name) != "adahessian"


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
    averaged by the training loop (``distributed.average_gradients``)."""
    kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in hp.items()}
    if kind(name) == "adahessian":
        # The probe (Rademacher) generator is seeded from the run's seed, so runs are repeatable.
        kw.update(seed=seed, process_group=process_group)
    return optimizer_class(name)(params, **kw)


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    name = kind(name)
    if name == "adahessian":
        from adahessian import AdaHessian  # the library under test

        return AdaHessian
    classes = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
               "adagrad": torch.optim.Adagrad}  # fmt: skip
    if name not in classes:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    return classes[name]


def check(name: str, hp: dict[str, Any]) -> None:
    """Build the optimizer on a dummy parameter; ValueError ``KEY: what is wrong`` if it fails."""
    known = [
        k for k in inspect.signature(optimizer_class(name)).parameters if k not in SET_BY_BUILD
    ]
    for key in hp:
        if key not in known:
            raise ValueError(
                f"{key}: unknown key{did_you_mean(key, known)}; known: {', '.join(known)}"
            )
    if kind(name) == "adahessian" and hp.get("hvp", "autograd") == "autograd":
        for key in FINITE_DIFFERENCE_KEYS:
            if key in hp:
                raise ValueError(
                    f'{key}: only used with hvp = "finite-difference" (here hvp is "autograd", '
                    'the default); remove it, or set hvp = "finite-difference"'
                )

    def fails(kw: dict[str, Any]) -> Exception | None:
        try:
            build(name, [torch.nn.Parameter(torch.zeros(2, 2))], kw, seed=0)
        except (TypeError, ValueError, RuntimeError) as e:
            return e
        return None

    error = fails(hp)
    if error is not None:
        # Name the key: the first one that fails alone (torch's messages do not all name it).
        culprit = next((k for k in hp if fails({k: hp[k]}) is not None), None)
        raise ValueError(f"{culprit}: {error}" if culprit else str(error))
