"""One rank of a 2-process gloo run of ``hvp="finite-difference"``, started by
test_fd_integrations.py (not a test module).

Scenarios:

* ``ddp``: a DistributedDataParallel model, ``AdaHessian(seed=None, hvp="finite-difference")``;
  each rank trains on its half of every batch.
* ``fsdp``: an FSDP2 (``fully_shard``, DTensor parameters) model; each rank computes the
  finite-difference estimate of its shards with its own probes, then the optimizer takes one step.

Each rank writes a JSON file of what the test compares with a single unsharded process.
"""

from __future__ import annotations

import json

import torch
import torch.distributed as dist
from torch import nn

import adahessian
from adahessian import AdaHessian

F64 = torch.float64
FSDP_SEED = 7


def make_model(seed: int = 0) -> nn.Module:
    """Every first dimension is even, so FSDP2's Shard(0) splits each parameter in equal halves;
    a ReLU, whose pattern the perturbed passes keep."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 2)
    ).to(F64)


def data(steps: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1234)
    return [
        (
            torch.randn(batch, 5, generator=g, dtype=F64),
            torch.randn(batch, 2, generator=g, dtype=F64),
        )
        for _ in range(steps)
    ]


def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.mse_loss(model(x), y)


def make_opt(params, seed: int | None) -> AdaHessian:
    return AdaHessian(params, lr=0.05, update_interval=2, seed=seed, hvp="finite-difference")


def train(model: nn.Module, opt: AdaHessian, batches) -> None:
    """The ordinary torch.optim closure loop (no create_graph anywhere)."""
    for x, y in batches:

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = loss_fn(model, x, y)
            loss.backward()
            return loss

        opt.step(closure)


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (all-gathered), or the tensor."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def flat(tensors) -> list[float]:
    return torch.cat([full(t).detach().reshape(-1) for t in tensors]).tolist()


def run_ddp(rank: int) -> dict:
    from torch.nn.parallel import DistributedDataParallel as DDP

    model = DDP(make_model(seed=0))
    opt = make_opt(model.parameters(), seed=None)  # rank 0's drawn seed must reach rank 1
    batches = [(x.chunk(2)[rank], y.chunk(2)[rank]) for x, y in data(4, 8)]
    train(model, opt, batches)
    return {
        "seed": opt.seed,
        "steps": opt.state_dict()["adahessian"]["steps"],
        "hessian_updates": opt.state_dict()["adahessian"]["hessian_updates"],
        "params": flat(model.module.parameters()),
    }


def run_fsdp(rank: int) -> dict:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh("cpu", (2,))
    model = make_model(seed=0)  # the same full model on both ranks before sharding
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    params = list(model.parameters())
    assert all(type(p).__name__ == "DTensor" for p in params)
    x, y = data(1, 8)[0]
    x, y = x.chunk(2)[rank], y.chunk(2)[rank]  # each rank its half of the batch

    def closure():
        for p in params:
            p.grad = None
        loss = loss_fn(model, x, y)
        loss.backward()  # FSDP2 reduce-scatters the mean gradient into the shards
        return loss

    # 1. The estimate on the shards, each rank with its own probes (seed + rank, as the
    #    optimizer's generator for sharded parameters).
    generator = torch.Generator().manual_seed(FSDP_SEED + rank)
    probes = adahessian.rademacher(params, generator=generator)
    before = [p.detach().clone() for p in params]
    _, estimate = adahessian.finite_difference_diagonal(closure, params, probes=[probes], eps=1e-5)
    unchanged = all(torch.equal(full(p), full(b)) for p, b in zip(params, before, strict=True))

    # 2. One optimizer step: the optimizer must draw the same shard-local probes.
    opt = AdaHessian(params, lr=0.05, seed=FSDP_SEED, hvp="finite-difference", fd_eps=1e-5)
    opt.step(closure)
    return {
        "local_probe_shapes": [list(v.to_local().shape) for v in probes],
        "probe_types": [type(v).__name__ for v in probes],
        "probes": flat(probes),
        "estimate": flat(estimate),
        "params_unchanged_by_estimate": unchanged,
        "params": flat(params),
        "hessian_updates": opt.state_dict()["adahessian"]["hessian_updates"],
    }


def main() -> None:
    from dist_worker import join  # the autograd worker beside this file (a script's sys.path)

    args = join(["ddp", "fsdp"], timeout_s=60)
    result = run_ddp(args.rank) if args.scenario == "ddp" else run_fsdp(args.rank)
    with open(args.out, "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
