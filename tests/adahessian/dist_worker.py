"""One rank of a 2-process gloo run, started by test_distributed.py (not a test module)."""

from __future__ import annotations

import argparse
import datetime
import json
import warnings

import torch
import torch.distributed as dist
from torch import nn

from adahessian import AdaHessian
from adahessian.distributed import average_buffers, broadcast_module

F64 = torch.float64


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten(), nn.Linear(12, 3)
    ).to(F64)  # fmt: skip


def data(steps: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1234)
    out = []
    for _ in range(steps):
        x = torch.randn(batch, 1, 4, 4, generator=g, dtype=F64)
        out.append((x, torch.randint(0, 3, (batch,), generator=g)))
    return out


def train(model, opt, batches) -> None:
    for x, y in batches:
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward(create_graph=opt.hessian_due)
        opt.step()


def join(scenarios: list[str], timeout_s: int) -> argparse.Namespace:
    """Parse a worker's command line (``--rank --port --scenario --out``, as the test's
    ``two_ranks`` fixture passes it) and join the 2-rank gloo group on loopback."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--scenario", choices=scenarios, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{args.port}",
        rank=args.rank,
        world_size=2,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return args


def main() -> None:
    args = join(["sync", "shared", "error"], timeout_s=20)
    rank = args.rank
    model = make_model(seed=rank)  # different on purpose: broadcast_module must align them
    broadcast_module(model)
    result: dict = {}
    if args.scenario == "sync":
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            AdaHessian(model.parameters())  # no process_group under an initialised group
        result["warning"] = " ".join(str(w.message) for w in caught)
        opt = AdaHessian(
            model.parameters(), lr=0.05, update_interval=2, process_group=dist.group.WORLD
        )
        batches = data(10, 16)[rank::2]  # each rank its own data and probes
        train(model, opt, batches)
        average_buffers(model)
    elif args.scenario == "shared":
        model.eval()  # batch statistics would differ between half and full batches
        opt = AdaHessian(model.parameters(), lr=0.05, update_interval=2, n_samples=2, seed=11,
                         shared_probes=True, process_group=dist.group.WORLD)  # fmt: skip
        batches = [(x.chunk(2)[rank], y.chunk(2)[rank]) for x, y in data(5, 16)]
        train(model, opt, batches)
    else:  # "error": rank 1 dies before the step; rank 0 must not hang
        opt = AdaHessian(model.parameters(), process_group=dist.group.WORLD)
        if rank == 1:
            raise SystemExit(3)
        try:
            train(model, opt, data(1, 8))
        except Exception as exc:  # the collective fails instead of waiting forever
            result["error"] = f"{type(exc).__name__}: {exc}"[:300]
    result["params"] = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
    result["buffers"] = torch.cat([b.double().flatten() for b in model.buffers()]).tolist()
    with open(args.out, "w") as f:
        json.dump(result, f)
    if args.scenario != "error":
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
