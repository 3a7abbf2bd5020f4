"""Finite-difference AdaHessian with DistributedDataParallel or FSDP2, on CPU (gloo) or GPUs (nccl).

    torchrun --standalone --nproc-per-node 2 examples/distributed_fd.py --mode ddp
    torchrun --standalone --nproc-per-node 2 examples/distributed_fd.py --mode fsdp

``AdaHessian(hvp="finite-difference")`` takes its Hessian-vector products from ordinary gradients,
:math:`Hv \\approx (g(\\theta + \\varepsilon v) - g(\\theta)) / \\varepsilon`, with the ordinary
``opt.step(closure)``: the closure runs forward and ``loss.backward()`` through the wrapped model,
so the wrapper synchronises every pass as usual and no double backward is needed (which DDP does
not synchronise and FSDP does not support).

* ``--mode ddp``: every rank perturbs the whole model by the same probes (with ``seed=None``,
  rank 0's seed is broadcast when the optimizer is created), and DDP averages each pass's
  gradients: R ranks with batch B take the steps of one process with batch R*B.
* ``--mode fsdp``: ``fully_shard`` makes the parameters DTensors, each rank holding a shard; every
  rank perturbs its own shard by its own probe (its generator is seeded with seed + rank), and
  FSDP2 all-gathers the perturbed parameters and reduce-scatters the gradients: the estimate of
  each shard is that of the whole model for the probe made of all the shards' probes.

The data are synthetic (a fixed random teacher network), so nothing is downloaded. Prints one
line per rank with a checksum of the whole (gathered) parameters: they must agree.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.distributed as dist
from torch import nn

from adahessian import AdaHessian


def make_model() -> nn.Module:
    torch.manual_seed(0)  # the same initial model on every rank
    return nn.Sequential(
        nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 4)
    )


def batches(steps: int, batch: int, rank: int, world: int, device: torch.device):
    """Each rank's share of a regression task (the same global stream on every rank)."""
    g = torch.Generator().manual_seed(1)
    teacher = torch.randn(16, 4, generator=g)
    for _ in range(steps):
        x = torch.randn(batch * world, 16, generator=g)
        y = torch.tanh(x @ teacher) + 0.05 * torch.randn(batch * world, 4, generator=g)
        yield x.chunk(world)[rank].to(device), y.chunk(world)[rank].to(device)


def wrap(model: nn.Module, mode: str, device: torch.device) -> nn.Module:
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def checksum(model: nn.Module) -> float:
    total = 0.0
    for p in model.parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p  # an FSDP2 shard: gather it
        total += full.detach().double().sum().item()
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=["ddp", "fsdp"], default="ddp")
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()

    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if use_cuda else "cpu")
    if use_cuda:
        torch.cuda.set_device(device)

    model = wrap(make_model().to(device), args.mode, device)
    # seed=None: drawn on rank 0 and broadcast. update_interval=2: every other step is a Hessian
    # step, which calls the closure twice (at θ and at θ + εv).
    opt = AdaHessian(model.parameters(), lr=0.05, update_interval=2, hvp="finite-difference")

    for step, (x, y) in enumerate(batches(args.steps, 32, rank, world, device)):

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            return loss

        loss = opt.step(closure)
        if step % 10 == 0 and rank == 0:
            print(f"{args.mode}: step {step + 1:3d}  rank-0 loss {loss.item():.4f}", flush=True)

    total = checksum(model)
    print(f"rank {rank}/{world}: parameter checksum {total:.12f}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
