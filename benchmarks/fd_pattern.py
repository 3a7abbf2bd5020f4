"""The finite-difference estimate on ReLU and max-pooling networks, with the first pass's
activation pattern kept (``keep_pattern=True``, the default) and without: its error against plain
double backward as ε shrinks.

For each model at initialisation, on one batch of 128 Fashion-MNIST training images, with one
Rademacher probe: the relative error ‖e - e*‖ / ‖e*‖ of the finite-difference Hutchinson estimate
e = v ⊙ Hv against the exact one e* (double backward in float64, same probe), forward and central
differences in float64 over three values of ε, and float32 at the library's default ε (and its
neighbours). Models: the harness's ResNet20 (ReLU, BatchNorm, residuals) and a CNN with LeakyReLU,
max pooling and ReLU6.

Usage::

    python benchmarks/fd_pattern.py                       # prints the tables
    python benchmarks/fd_pattern.py --out docs/results/fd-pattern
"""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from adahessian import finite_difference_diagonal, rademacher
from adahessian.finite_difference import default_eps
from adahessian_bench.data_images import load_fashion_mnist, to_nchw32
from adahessian_bench.environment import cpu_model
from adahessian_bench.models import resnet20

FORWARD = (1e-3, 1e-4, 1e-5)
CENTRAL = (1e-2, 1e-3, 1e-4)
FLOAT32 = (1e-3, 1e-4, 1e-5)


def kink_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.LeakyReLU(0.1), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU6(), nn.MaxPool2d(2, stride=2, padding=1),
        nn.Flatten(), nn.Linear(32 * 5 * 5, 10),
    )  # fmt: skip


MODELS: dict[str, Callable[[], nn.Module]] = {
    "ResNet20 (ReLU, BatchNorm)": lambda: resnet20(in_channels=1),
    "CNN (LeakyReLU, max pooling, ReLU6, BatchNorm)": kink_cnn,
}


def batch(n: int = 128) -> tuple[Tensor, Tensor]:
    data = load_fashion_mnist()
    x = to_nchw32(data.x_train[:n]).double() / 255
    return (x - x.mean()) / x.std(), torch.from_numpy(data.y_train[:n])


def errors(name: str, x: Tensor, y: Tensor) -> dict[str, float]:
    torch.manual_seed(0)
    model = MODELS[name]().double()
    buffers = copy.deepcopy(model.state_dict())
    params = list(model.parameters())
    probe = rademacher(params, generator=torch.Generator().manual_seed(1))

    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)
    exact = _exact(grads, params, probe)
    del loss, grads
    model.load_state_dict(buffers)

    def error(dtype: torch.dtype, **kwargs: object) -> float:
        net = copy.deepcopy(model).to(dtype)
        ps = list(net.parameters())
        xs = x.to(dtype)

        def closure() -> Tensor:
            for p in ps:
                p.grad = None
            loss = F.cross_entropy(net(xs), y)
            loss.backward()
            return loss

        _, estimate = finite_difference_diagonal(
            closure,
            ps,
            probes=[[v.to(dtype) for v in probe]],
            **kwargs,  # type: ignore[arg-type]
        )
        e = torch.cat([t.flatten().double() for t in estimate])
        return float((e - exact).norm() / exact.norm())

    out: dict[str, float] = {}
    for keep in (True, False):
        tag = "kept" if keep else "free"
        for eps in FORWARD:
            key = f"float64 forward {eps:g} {tag}"
            out[key] = error(torch.float64, eps=eps, keep_pattern=keep)
            print(f"  float64 forward ε={eps:g} pattern {tag}: {out[key]:.3g}")
        for eps in CENTRAL:
            key = f"float64 central {eps:g} {tag}"
            out[key] = error(torch.float64, eps=eps, scheme="central", keep_pattern=keep)
            print(f"  float64 central ε={eps:g} pattern {tag}: {out[key]:.3g}")
        for eps in FLOAT32:
            key = f"float32 forward {eps:g} {tag}"
            out[key] = error(torch.float32, eps=eps, keep_pattern=keep)
            print(f"  float32 forward ε={eps:g} pattern {tag}: {out[key]:.3g}")
    return out


def _exact(grads: tuple[Tensor, ...], params: list[Tensor], probe: list[Tensor]) -> Tensor:
    hv = torch.autograd.grad(grads, params, probe)
    return torch.cat([(v * h).flatten() for v, h in zip(probe, hv, strict=True)])


def _order(a: float, b: float) -> str:
    return f"{a / b:.1f}x"


def table(name: str, r: dict[str, float]) -> str:
    f32 = default_eps(torch.float32)
    f32_free = default_eps(torch.float32, keep_pattern=False)
    lines = [
        f"### {name}",
        "",
        "float64, ‖FD - exact‖ / ‖exact‖ (the exact product: double backward, which ignores the "
        "kinks); the error falls by the factor in brackets per tenfold smaller ε:",
        "",
        "| scheme | ε | pattern kept | without the pattern |",
        "|---|---:|---:|---:|",
    ]
    for scheme, grid in (("forward", FORWARD), ("central", CENTRAL)):
        for i, eps in enumerate(grid):
            kept, free = r[f"float64 {scheme} {eps:g} kept"], r[f"float64 {scheme} {eps:g} free"]
            before = r[f"float64 {scheme} {grid[i - 1]:g} kept"] if i else None
            step = "" if before is None else f" ({_order(before, kept)})"
            lines.append(f"| {scheme} | {eps:g} | {kept:.2e}{step} | {free:.2e} |")
    lines += [
        "",
        f"float32, forward (the library's default ε: {f32:g} with the pattern kept, {f32_free:g} "
        "without):",
        "",
        "| ε | pattern kept | without the pattern |",
        "|---:|---:|---:|",
    ]
    for eps in FLOAT32:
        kept, free = r[f"float32 forward {eps:g} kept"], r[f"float32 forward {eps:g} free"]
        mark_k = " (default)" if eps == f32 else ""
        mark_f = " (default)" if eps == f32_free else ""
        lines.append(f"| {eps:g} | {kept:.2e}{mark_k} | {free:.2e}{mark_f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write README.md and errors.json here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    x, y = batch()
    results = {}
    for name in MODELS:
        print(name)
        results[name] = errors(name, x, y)
    cpu = cpu_model()
    header = (
        "# Finite differences on ReLU and max-pooling networks: the activation pattern kept\n\n"
        f"`python benchmarks/fd_pattern.py --out docs/results/fd-pattern` (torch "
        f"{torch.__version__}, {cpu}, one thread). One batch of 128 Fashion-MNIST training "
        "images, the models at initialisation (training mode: BatchNorm uses the batch's "
        "statistics), one Rademacher probe.\n\n"
    )
    text = header + "\n".join(table(name, r) for name, r in results.items())
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "README.md").write_text(text)
        (args.out / "errors.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
