"""Helpers for data-parallel AdaHessian on ``torch.distributed``.

DDP synchronises first-order gradients only (its reducer does not see double backward), and FSDP
does not support double backward at all, so AdaHessian trains the *unwrapped* model and does the
averaging itself: ``AdaHessian(model.parameters(), process_group=dist.group.WORLD)`` averages the
gradients and, on Hessian steps, the Hessian-diagonal estimates across ranks in one collective call
per step. What it needs besides, provided here:

* :func:`broadcast_module` — start every rank from rank 0's parameters and buffers;
* :func:`average_buffers` — keep buffers such as BatchNorm running statistics consistent.

Typical use, launched with ``torchrun --nproc-per-node N train.py``::

    dist.init_process_group("gloo")          # "nccl" on GPUs
    model = make_model()
    broadcast_module(model)
    opt = AdaHessian(model.parameters(), process_group=dist.group.WORLD)
    for x, y in shard_of_the_data:
        opt.zero_grad()
        loss_fn(model(x), y).backward(create_graph=opt.hessian_due)
        opt.step()
    average_buffers(model)                   # e.g. before evaluating or saving
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["all_reduce_mean_", "average_buffers", "broadcast_module", "unwrap"]


def initialised() -> bool:
    """Whether ``torch.distributed`` runs with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_sharded(p: Any) -> bool:
    """An FSDP1 flat parameter or a DTensor (FSDP2 ``fully_shard``, tensor parallelism)."""
    return bool(getattr(p, "_is_flat_param", False)) or type(p).__name__ == "DTensor"


def resolve_seed(seed: int | None, process_group: Any, *, everywhere: bool = False) -> int:
    """The probe seed. When none is given, one is drawn, and with a process group (or with
    ``everywhere``, whenever ``torch.distributed`` runs with several ranks) rank 0's is broadcast,
    so that every rank starts from the same seed."""
    if seed is not None:
        return seed
    drawn = int(torch.Generator().seed()) % (2**62)
    if process_group is None and not (everywhere and initialised()):
        return drawn
    box = [drawn]
    src = 0 if process_group is None else dist.get_global_rank(process_group, 0)
    dist.broadcast_object_list(box, src=src, group=process_group)
    return int(box[0])


def rank_offset(process_group: Any, shared_probes: bool, sharded: bool) -> int:
    """What a rank adds to the seed of its probe generator: its rank where the ranks draw
    independent probes (with a process group, unless ``shared_probes``), and where each rank
    draws the probes of its own shard of sharded parameters; 0 otherwise."""
    if sharded and initialised():
        return dist.get_rank()
    if process_group is not None and not shared_probes:
        return dist.get_rank(process_group)
    return 0


def check_not_sharded(param_groups: list[dict[str, Any]]) -> None:
    """Refuse sharded parameters on the double-backward path, which they do not support."""
    for group in param_groups:
        for p in group["params"]:
            if is_sharded(p):
                raise ValueError(
                    "AdaHessian(hvp='autograd') needs double backward, which FSDP and "
                    "DTensor-sharded parameters do not support: use "
                    "AdaHessian(..., hvp='finite-difference') with opt.step(closure), or pass "
                    "the unwrapped model's parameters and process_group=... "
                    "(see adahessian.distributed)"
                )


def warn_if_unsynchronised(process_group: Any) -> None:
    """Double backward through a DDP model is not synchronised: say so when there are several
    ranks and no process group to average over."""
    if process_group is not None or not initialised():
        return
    warnings.warn(
        "torch.distributed is initialised but AdaHessian has no process_group, so the "
        "ranks' Hessian estimates are not averaged (DDP does not synchronise double "
        "backward): train the unwrapped model with "
        "AdaHessian(..., process_group=dist.group.WORLD), or use "
        "AdaHessian(..., hvp='finite-difference') with the DDP model",
        stacklevel=4,
    )


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (or the model).

    Train that module with ``AdaHessian(..., process_group=...)`` instead of the wrapper.

    Args:
        model: a module, wrapped or not.

    Returns:
        ``model.module`` for a DDP or DataParallel wrapper, ``model`` itself otherwise.
    """
    inner = getattr(model, "module", None)
    if isinstance(inner, nn.Module) and type(model).__name__ in (
        "DistributedDataParallel",
        "DataParallel",
    ):
        return inner
    return model


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0, group: Any = None) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank of ``group``, in one call.

    Args:
        module: the (unwrapped) model; its parameters and buffers are overwritten in place on
            every rank but ``src``.
        src: the rank whose values every rank takes.
        group: the process group; None is the default (world) group.
    """
    tensors = [t for t in (*module.parameters(), *module.buffers()) if t.numel()]
    if not tensors:
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for same in by_dtype.values():
        flat = torch.cat([t.detach().reshape(-1) for t in same])
        dist.broadcast(flat, src=src, group=group)
        for t, chunk in zip(same, flat.split([t.numel() for t in same]), strict=True):
            t.copy_(chunk.view_as(t))


@torch.no_grad()
def all_reduce_mean_(
    tensors: list[torch.Tensor], group: Any = None, dtype: torch.dtype | None = None
) -> None:
    """Replace each tensor by its mean over the ranks of ``group``, in one collective call.

    The tensors travel in one flat buffer of ``dtype`` (by default their promoted dtype, at
    least float32, so float16/bfloat16 values are summed in float32).

    Args:
        tensors: the tensors to average, in place.
        group: the process group; None is the default (world) group.
        dtype: the dtype of the flat buffer (None: as above).
    """
    if not tensors:
        return
    if dtype is None:
        dtype = tensors[0].dtype
        for t in tensors[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        if dtype in (torch.float16, torch.bfloat16):
            dtype = torch.float32
    flat = torch.cat([t.reshape(-1).to(dtype) for t in tensors])
    dist.all_reduce(flat, group=group)
    flat.div_(dist.get_world_size(group))
    for t, chunk in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
        t.copy_(chunk.view_as(t))


def average_buffers(module: nn.Module, group: Any = None) -> None:
    """Average the floating-point buffers (BatchNorm running mean and variance, ...) across the
    ranks of ``group``; integer buffers (such as ``num_batches_tracked``) are left as they are.

    Call it before evaluating or saving a model trained data-parallel: each rank's running
    statistics come from its own shard of the data.

    Args:
        module: the (unwrapped) model; its buffers are averaged in place.
        group: the process group; None is the default (world) group.
    """
    floats = [b for b in module.buffers() if b.is_floating_point() and b.numel()]
    all_reduce_mean_(floats, group, dtype=torch.float64)
