"""Data-parallel AdaHessian on torch.distributed, on CPU (gloo) or GPUs (nccl).

    torchrun --standalone --nproc-per-node 2 examples/distributed.py

Each rank trains the unwrapped model on its own shard of scikit-learn's digits (no download);
AdaHessian averages gradients and Hessian estimates across ranks, so every rank applies the same
update. Prints one line per rank with a checksum of its parameters: they must agree.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from sklearn.datasets import load_digits
from torch import nn

from adahessian import AdaHessian
from adahessian.distributed import average_buffers, broadcast_module


def main() -> None:
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu")

    data, target = load_digits(return_X_y=True)
    X = torch.tensor(data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)[rank::world].to(device)
    y = torch.tensor(target)[rank::world].to(device)

    torch.manual_seed(rank)  # deliberately different: broadcast_module aligns the ranks
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(8 * 16, 10),
    ).to(device)  # fmt: skip
    broadcast_module(model)
    opt = AdaHessian(
        model.parameters(), lr=0.05, update_interval=2, seed=0, process_group=dist.group.WORLD
    )

    order = torch.Generator().manual_seed(rank)
    for step in range(20):
        idx = torch.randint(0, len(X), (64,), generator=order).to(device)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
        loss.backward(create_graph=opt.hessian_due)
        opt.step()
        if step % 5 == 4 and rank == 0:
            print(f"step {step + 1:2d}  rank-0 loss {loss.item():.4f}", flush=True)
    average_buffers(model)

    checksum = sum(p.detach().double().sum().item() for p in model.parameters())
    print(f"rank {rank}/{world}: parameter checksum {checksum:.12f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
