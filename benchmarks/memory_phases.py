"""Where AdaHessian's memory goes in one step, against Adam's: resident memory after the forward,
the peak through the backward, what stays alive after ``backward(create_graph=True)``, and the
peak through ``step()`` (the Hessian-vector product), each above the resident size before the
step, on the step-cost benchmark's ResNet20 (batch 128).

The process runs with glibc's allocator set to hand freed blocks back at once (``MEMORY_ENV`` of
step_cost.py; set it in the environment, or the script re-executes itself with it), so that the
resident size follows the live tensors. Usage::

    python benchmarks/memory_phases.py [--fast-batchnorm] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import step_cost as sc

from adahessian import AdaHessian
from adahessian.batchnorm import use_fast_batchnorm


def mib(key: str) -> float:
    return sc._status_kib(key) / 1024


def main(argv: list[str] | None = None) -> list[dict[str, float | str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--fast-batchnorm", action="store_true")
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    if any(os.environ.get(k) != v for k, v in sc.MEMORY_ENV.items()) and argv is None:
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **sc.MEMORY_ENV})
    torch.set_num_threads(1)
    task = sc.make_task("resnet20", args.quick)
    rows: list[dict[str, float | str]] = []
    with task.context():
        model = use_fast_batchnorm(task.model) if args.fast_batchnorm else task.model
        adahessian = AdaHessian(model.parameters(), seed=0)
        adam = torch.optim.Adam(model.parameters())
        for _ in range(args.rounds):
            for name in ("adam", "adahessian"):
                gc.collect()
                base = mib("VmRSS")
                sc._reset_peak()
                loss = task.loss_fn(model(task.x), task.y)
                forward = mib("VmRSS") - base
                opt = adam if name == "adam" else adahessian
                opt.zero_grad(set_to_none=True)
                loss.backward(create_graph=name == "adahessian")
                backward_peak = mib("VmHWM") - base
                after_backward = mib("VmRSS") - base
                del loss
                opt.step()
                rows.append({"optimizer": name, "after forward": forward,
                             "peak through backward": backward_peak,
                             "alive after backward": after_backward,
                             "peak through step": mib("VmHWM") - base})  # fmt: skip
    last = rows[-2:]  # the last round (the first allocates the optimizer state)
    print("| optimizer | " + " | ".join(k for k in last[0] if k != "optimizer") + " |")
    print("|---|" + "---:|" * (len(last[0]) - 1))
    for r in last:
        print(f"| {r['optimizer']} | " + " | ".join(f"{v:.0f}" for k, v in r.items()
                                                    if k != "optimizer") + " |")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
