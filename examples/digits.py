"""Adam against AdaHessian on real data: scikit-learn's handwritten digits (1,797 8x8 images).

A small CNN (a conv layer, so AdaHessian's kernel averaging is exercised), 3 seeds each, a fixed
train/test split. Prints test accuracy (mean +- std) and time per step relative to Adam.

    python examples/digits.py [--epochs 8] [--seeds 3] [--train-subset N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from sklearn.datasets import load_digits
from torch import nn

from adahessian import AdaHessian


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.Tanh(), nn.AvgPool2d(2),
        nn.Flatten(), nn.Linear(8 * 16, 10),
    )  # fmt: skip


def run(name: str, seed: int, epochs: int, X, y, train, test) -> tuple[float, float]:
    """Train one model; return (test accuracy, mean seconds per step)."""
    torch.manual_seed(seed)
    model = make_model()
    if name == "adahessian":
        opt: torch.optim.Optimizer = AdaHessian(model.parameters(), lr=0.15, seed=seed)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    order = torch.Generator().manual_seed(seed)
    step_time, steps = 0.0, 0
    for _ in range(epochs):
        for idx in train[torch.randperm(len(train), generator=order)].split(64):
            start = time.perf_counter()
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(X[idx]), y[idx])
            loss.backward(create_graph=isinstance(opt, AdaHessian) and opt.hessian_due)
            opt.step()
            step_time += time.perf_counter() - start
            steps += 1
    with torch.no_grad():
        accuracy = (model(X[test]).argmax(1) == y[test]).float().mean().item()
    return accuracy, step_time / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train-subset", type=int, default=1400,
                        help="train on the first N of the 1,400 training images")  # fmt: skip
    args = parser.parse_args()

    data, target = load_digits(return_X_y=True)
    X = torch.tensor(data / 16.0, dtype=torch.float32).view(-1, 1, 8, 8)
    y = torch.tensor(target)
    perm = torch.randperm(len(X), generator=torch.Generator().manual_seed(0))
    train, test = perm[: min(args.train_subset, 1400)], perm[1400:]

    results = {}
    for name in ("adam", "adahessian"):
        runs = [run(name, s, args.epochs, X, y, train, test) for s in range(args.seeds)]
        results[name] = runs
        print(f"{name}: done ({args.seeds} seeds)", flush=True)

    adam_time = statistics.mean(t for _, t in results["adam"])
    threads = torch.get_num_threads()
    print(f"\nDigits: {len(train)} train / {len(test)} test images, {args.epochs} epochs,", end=" ")
    print(f"{args.seeds} seeds, torch {torch.__version__}, {threads} threads\n")
    print("| optimizer  | test accuracy (%) | ms / step | time / step vs Adam |")
    print("|------------|-------------------|-----------|---------------------|")
    for name, runs in results.items():
        accs = [100 * a for a, _ in runs]
        std = statistics.stdev(accs) if len(accs) > 1 else 0.0
        t = statistics.mean(t for _, t in runs)
        acc = f"{statistics.mean(accs):6.2f} ± {std:4.2f}"
        print(f"| {name:<10} | {acc:<17} | {1e3 * t:9.2f} | {t / adam_time:18.2f}x |")


if __name__ == "__main__":
    main()
