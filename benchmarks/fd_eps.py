"""How the finite-difference estimate's error depends on ε, per dtype: the curve behind
``adahessian.finite_difference.default_eps``.

For each model (a pre-norm Transformer LM block with GELU and LayerNorm, a GELU ConvNet, a ReLU
ConvNet with BatchNorm) at initialisation, on one fixed batch, with one Rademacher probe: the
relative error ‖e - e*‖ / ‖e*‖ of the finite-difference Hutchinson estimate e = v ⊙ Hv against the
exact one e* (plain double backward of the same model in float64, same probe), for float64,
float32, and float32 parameters under CPU autocast to bfloat16 and float16, forward and central
differences, over a grid of ε. For the ReLU network the exact product ignores the kinks, so the
error there measures how much kink curvature the quotient picks up.

Usage::

    python benchmarks/fd_eps.py                 # prints a markdown table per model
    python benchmarks/fd_eps.py --json out.json
"""

from __future__ import annotations

import argparse
import copy
import json
import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from adahessian import finite_difference_diagonal, hutchinson_diagonal, rademacher

EPSILONS = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 1e-6, 1e-7)
SETTINGS = ("float64", "float32", "autocast-bfloat16", "autocast-float16")


class Block(nn.Module):
    def __init__(self, vocab: int = 64, d: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))
        self.out = nn.Linear(d, vocab)
        self.heads = heads

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.emb(tokens)
        b, t, d = h.shape
        q, k, v = (
            z.view(b, t, self.heads, -1).transpose(1, 2) for z in self.qkv(self.ln1(h)).chunk(3, -1)
        )
        att = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(
            torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf")
        )
        h = h + self.proj((att.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d))
        return self.out(h + self.ff(self.ln2(h)))


def convnet(act: type[nn.Module], bn: bool) -> nn.Module:
    norm = (lambda c: nn.BatchNorm2d(c)) if bn else (lambda c: nn.Identity())
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), norm(8), act(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), norm(16), act(), nn.AdaptiveAvgPool2d(2),
        nn.Flatten(), nn.Linear(64, 10),
    )  # fmt: skip


def problems() -> dict[str, tuple[nn.Module, Tensor, Callable[[Tensor, Tensor], Tensor], Tensor]]:
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 64, (8, 33), generator=g)
    images = torch.randn(32, 1, 12, 12, generator=g)
    labels = torch.randint(0, 10, (32,), generator=g)

    def lm_loss(out: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(out.flatten(0, 1), y.flatten())

    torch.manual_seed(0)
    return {
        "transformer (GELU, LayerNorm)": (Block(), tokens[:, :-1], lm_loss, tokens[:, 1:]),
        "convnet (GELU)": (convnet(nn.GELU, False), images, F.cross_entropy, labels),
        "convnet (ReLU, BatchNorm)": (convnet(nn.ReLU, True), images, F.cross_entropy, labels),
    }


def estimate(
    model: nn.Module,
    x: Tensor,
    loss_fn: Callable,
    y: Tensor,
    probe: list[Tensor],
    setting: str,
    eps: float,
    scheme: str,
) -> list[Tensor]:
    model = copy.deepcopy(model).double() if setting == "float64" else copy.deepcopy(model)
    x = x.double() if setting == "float64" and x.is_floating_point() else x
    params = list(model.parameters())
    autocast = setting.startswith("autocast")
    dtype = torch.bfloat16 if setting.endswith("bfloat16") else torch.float16

    def closure() -> Tensor:
        model.zero_grad()
        with torch.autocast("cpu", dtype=dtype, enabled=autocast):
            loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    v = [t.to(p.dtype) for t, p in zip(probe, params, strict=True)]
    _, e = finite_difference_diagonal(closure, params, eps=eps, scheme=scheme, probes=[v])
    return [t.double() for t in e]


def exact(
    model: nn.Module, x: Tensor, loss_fn: Callable, y: Tensor, probe: list[Tensor]
) -> list[Tensor]:
    model = copy.deepcopy(model).double()
    x = x.double() if x.is_floating_point() else x
    params = list(model.parameters())
    grads = torch.autograd.grad(loss_fn(model(x), y), params, create_graph=True)
    return hutchinson_diagonal(grads, params, probes=[[v.double() for v in probe]])


def relative_error(a: list[Tensor], b: list[Tensor]) -> float:
    num = sum(float((x - y).pow(2).sum()) for x, y in zip(a, b, strict=True))
    return math.sqrt(num / sum(float(y.pow(2).sum()) for y in b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the errors here")
    args = parser.parse_args()
    results: dict[str, dict[str, dict[str, float]]] = {}
    for name, (model, x, loss_fn, y) in problems().items():
        model.train()
        probe = rademacher(list(model.parameters()), generator=torch.Generator().manual_seed(1))
        reference = exact(model, x, loss_fn, y, probe)
        rows: dict[str, dict[str, float]] = {}
        for setting in SETTINGS:
            for scheme in ("forward", "central"):
                rows[f"{setting} {scheme}"] = {
                    f"{eps:g}": relative_error(
                        estimate(model, x, loss_fn, y, probe, setting, eps, scheme), reference
                    )
                    for eps in EPSILONS
                }
        results[name] = rows
        print(f"\n### {name}: relative error of v ⊙ Hv against float64 double backward\n")
        print("| dtype, scheme | " + " | ".join(f"{e:g}" for e in EPSILONS) + " |")
        print("|---|" + "---:|" * len(EPSILONS))
        for label, errs in rows.items():
            best = min(errs.values())
            cells = [f"**{v:.1e}**" if v == best else f"{v:.1e}" for v in errs.values()]
            print(f"| {label} | " + " | ".join(cells) + " |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
