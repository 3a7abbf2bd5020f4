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

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["all_reduce_mean_", "average_buffers", "broadcast_module", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (or the model).

    Train that module with ``AdaHessian(..., process_group=...)`` instead of the wrapper."""
    inner = getattr(model, "module", None)
    if isinstance(inner, nn.Module) and type(model).__name__ in (
        "DistributedDataParallel",
        "DataParallel",
    ):
        return inner
    return model


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0, group: Any = None) -> None:
    """Copy rank ``src``'s parameters and buffers to every rank of ``group``, in one call."""
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
    least float32, so float16/bfloat16 values are summed in float32)."""
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
    ranks of ``group``; integer buffers (such as ``num_batches_tracked``) are left as they are."""
    floats = [b for b in module.buffers() if b.is_floating_point() and b.numel()]
    all_reduce_mean_(floats, group, dtype=torch.float64)
