"""Time of one gradient plus one Hessian-vector product through conv-BN-ReLU blocks (and
through one BatchNorm2d layer alone), with PyTorch's BatchNorm2d against the closed-form double
backward of ``adahessian.batchnorm``.

Both variants run interleaved in one process after a warm-up, and the medians are compared.
Usage: ``python benchmarks/batchnorm_hvp.py [--repeats 15] [--batch 128] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch
from step_cost import cpu_model  # the sibling script (run from benchmarks/)
from torch import Tensor, nn

from adahessian import hutchinson_diagonal
from adahessian.batchnorm import use_fast_batchnorm


def blocks(widths: list[int]) -> nn.Module:
    """ResNet20-like stack of conv-BN-ReLU blocks, then a linear classifier."""
    layers: list[nn.Module] = []
    c_in = 3
    for i, c in enumerate(widths):
        stride = 2 if i > 0 and c != widths[i - 1] else 1
        layers += [nn.Conv2d(c_in, c, 3, stride, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()]
        c_in = c
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c_in, 10)]
    return nn.Sequential(*layers)


def grad_and_hvp(model: nn.Module, x: Tensor, y: Tensor, gen: torch.Generator) -> float:
    params = list(model.parameters())
    start = time.perf_counter()
    out = model(x)
    if out.dim() == 2:
        loss = nn.functional.cross_entropy(out, y)
    else:  # a lone BatchNorm layer: a loss with a non-zero Hessian in its output
        params = [x, *params]
        loss = out.square().mean()
    grads = torch.autograd.grad(loss, params, create_graph=True)
    hutchinson_diagonal(grads, params, generator=gen)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--widths", default="16,16,32,32,64,64")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    widths = [int(w) for w in args.widths.split(",")]
    net = blocks(widths).train()
    bn = nn.BatchNorm2d(widths[0]).train()
    x = torch.randn(args.batch, 3, args.size, args.size)
    x_bn = torch.randn(args.batch, widths[0], args.size, args.size, requires_grad=True)
    y = torch.randint(0, 10, (args.batch,))
    gen = torch.Generator().manual_seed(0)
    cases = {  # name: (stock model, fast model, input)
        "blocks": (net, use_fast_batchnorm(copy.deepcopy(net)), x),
        "batchnorm_only": (bn, use_fast_batchnorm(copy.deepcopy(bn)), x_bn),
    }
    times = {(case, kind): [] for case in cases for kind in ("stock", "fast")}
    for i in range(args.warmup + args.repeats):
        for case, (stock, fast, inp) in cases.items():
            order = [("stock", stock), ("fast", fast)]
            if i % 2:
                order.reverse()
            for kind, model in order:
                t = grad_and_hvp(model, inp, y, gen)
                if i >= args.warmup:
                    times[case, kind].append(t)
    result: dict = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": cpu_model(),
        "batch": args.batch,
        "size": args.size,
        "widths": widths,
        "repeats": args.repeats,
    }
    for case in cases:
        med = {kind: statistics.median(times[case, kind]) for kind in ("stock", "fast")}
        result[case] = {"median_s": med, "fast_over_stock": med["fast"] / med["stock"]}
        print(
            f"{case}: grad + HVP, median of {args.repeats}: stock {med['stock'] * 1e3:.1f} ms, "
            f"fast {med['fast'] * 1e3:.1f} ms, fast/stock = {med['fast'] / med['stock']:.3f}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
