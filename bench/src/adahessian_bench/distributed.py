"""Data parallelism: the set-up of a run launched with torchrun (WORLD_SIZE > 1).

Every rank trains the unwrapped model on its own shard of each batch: AdaHessian averages gradients
and Hessian estimates itself (process_group), the first-order optimizers get their gradients
averaged here (``average_gradients``), BatchNorm statistics are averaged before each evaluation
(``train.evaluate``), and rank 0 alone writes files.
"""

from __future__ import annotations

import os

import torch


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside a process group."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def init_distributed(device: str) -> str:
    """Join the process group torchrun describes, if any; return the device of this rank."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return device
    backend = "nccl" if device.startswith("cuda") else "gloo"
    torch.distributed.init_process_group(backend)
    if device.startswith("cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    return device


def average_gradients(model: torch.nn.Module) -> None:
    """Average the gradients over the ranks, in one collective call."""
    from adahessian.distributed import all_reduce_mean_

    all_reduce_mean_([p.grad for p in model.parameters() if p.grad is not None])
