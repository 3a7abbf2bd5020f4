"""Cost of one optimizer step: SGD, Adam, AdamW and AdaHessian's curvature paths side by side.

For each model (a CIFAR-style ResNet20, a small pre-norm Transformer language model, an
embedding-heavy classifier) every contender gets its own copy of the model and one fixed
synthetic batch. Contenders run interleaved in one process, one round at a time (the order
rotates each round), after warm-up rounds; a round times one step, or one whole 10-step cycle
for ``update_interval=10`` (divided by 10). The table reports the median step time relative to
Adam's; a compiled contender's ratio to Adam on the same compiled model (``adam-compiled``, run
whenever ``adahessian-fd-compiled`` is) follows the table, with the compile time, which the
warm-up round absorbs and the step times leave out. Peak memory above the baseline is measured
for each contender in a subprocess of its own (the process's peak resident set size, ``VmHWM``,
over two steps, minus its resident size before the first, with the peak reset in between where the
kernel allows; glibc's allocator is set to give freed tensors back at once, see ``MEMORY_ENV``);
for ``update_interval=10`` also over the nine plain steps that follow the Hessian step.

The ``adahessian-fd*`` contenders take finite-difference Hessian-vector products
(``AdaHessian(hvp="finite-difference")``, stepped as ``opt.step(closure)`` with torch.optim's
ordinary closure, which a Hessian step calls once more at θ + εv): two ordinary forward+backward
passes per Hessian step, no double backward; the perturbed pass keeps the first pass's activation
pattern (``adahessian-fd-free``: it does not, which shows what keeping it costs). The compiled
contenders compile with inductor; with ``--quick`` with aot_eager (the same graphs without
inductor's code generation, which takes minutes on a small machine), so a ``--quick`` run still
runs every contender.

The PyPI implementations (torch-optimizer, pytorch-optimizer) are contenders when installed:
``pip install -e '.[references]'`` (``make setup`` does it).

Usage::

    python benchmarks/step_cost.py                      # the full run (tens of minutes on 2 cores)
    python benchmarks/step_cost.py --quick              # tiny sizes, a few steps: a smoke test
    python benchmarks/step_cost.py --json out.json --markdown out.md
    python benchmarks/step_cost.py --models resnet20 --contenders adam,adahessian
    python benchmarks/step_cost.py --models resnet20,transformer \
        --contenders adam,adahessian,adahessian-fd,adahessian-int10,adahessian-fd-int10
    python benchmarks/step_cost.py --models resnet20,transformer \
        --contenders adam-compiled,adahessian-fd-compiled      # adam is always added

Timings on a shared machine are noisy; the ratios are indicative only.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import gc
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from adahessian import (
    AdaHessian,
    CompiledCurvature,
    batched_hutchinson_diagonal,
    forward_hutchinson,
)
from adahessian.batchnorm import use_fast_batchnorm

# backward(create_graph=True) warns about a parameter <-> gradient reference cycle; the
# AdaHessian contenders break it in step() and the external ones by zero_grad(set_to_none=True).
warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")

# ----------------------------------------------------------------------------------- models


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016): ``6n + 2`` layers, widths w, 2w, 4w; n = 3 is ResNet20."""

    def __init__(self, n: int = 3, width: int = 16, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width))
        blocks: list[nn.Module] = []
        c = width
        for stage, w in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                blocks.append(BasicBlock(c, w, 2 if stage > 0 and i == 0 else 1))
                c = w
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(F.relu(self.stem(x)))
        return self.head(out.mean((2, 3)))


class TinyLM(nn.Module):
    """Pre-norm Transformer language model (causal self-attention)."""

    def __init__(self, vocab: int, d: int, heads: int, layers: int, seq: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(seq, d) * 0.02)
        layer = nn.TransformerEncoderLayer(
            d, heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, vocab)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(seq))

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.tok(tokens) + self.pos[: tokens.shape[1]]
        h = self.layers(h, mask=self.mask, is_causal=True)
        return self.out(self.norm(h))


class BagClassifier(nn.Module):
    """Embedding-heavy model: mean of token embeddings, then a small MLP."""

    def __init__(self, vocab: int, d: int, hidden: int, classes: int) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.mlp = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, tokens: Tensor) -> Tensor:
        return self.mlp(self.emb(tokens).mean(1))


@dataclass
class Task:
    name: str
    description: str
    model: nn.Module
    x: Tensor
    y: Tensor
    loss_fn: Callable[[Tensor, Tensor], Tensor]
    context: Callable[[], contextlib.AbstractContextManager[Any]] = contextlib.nullcontext
    has_batchnorm: bool = False
    quick: bool = False


def _token_xent(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def _math_sdpa() -> contextlib.AbstractContextManager[Any]:
    # The math backend is twice differentiable; the fused CPU kernels are not.
    return torch.nn.attention.sdpa_kernel(torch.nn.attention.SDPBackend.MATH)


def make_task(name: str, quick: bool) -> Task:
    torch.manual_seed(0)
    if name == "resnet20":
        n, width, batch, size = (1, 4, 8, 8) if quick else (3, 16, 128, 32)
        model = ResNet(n, width)
        x, y = torch.randn(batch, 3, size, size), torch.randint(0, 10, (batch,))
        desc = (
            f"ResNet{6 * n + 2} (widths {width}/{2 * width}/{4 * width}), "
            f"batch {batch}x3x{size}x{size}"
        )
        return Task(name, desc, model, x, y, F.cross_entropy, has_batchnorm=True, quick=quick)
    if name == "transformer":
        vocab, d, heads, layers, seq, batch = (
            (50, 16, 2, 1, 8, 4) if quick else (2000, 128, 4, 2, 64, 32)
        )
        model = TinyLM(vocab, d, heads, layers, seq)
        tokens = torch.randint(0, vocab, (batch, seq + 1))
        desc = (
            f"pre-norm Transformer LM, {layers} layers, d {d}, {heads} heads, vocab {vocab}, "
            f"batch {batch}x{seq} tokens, math SDPA"
        )
        x, y = tokens[:, :-1], tokens[:, 1:]
        return Task(name, desc, model, x, y, _token_xent, _math_sdpa, quick=quick)
    if name == "embedding":
        vocab, d, hidden, bag, batch = (100, 8, 16, 4, 8) if quick else (50000, 64, 128, 32, 128)
        model = BagClassifier(vocab, d, hidden, 10)
        x, y = torch.randint(0, vocab, (batch, bag)), torch.randint(0, 10, (batch,))
        desc = f"embedding bag classifier, vocab {vocab} x {d}, batch {batch}x{bag} tokens"
        return Task(name, desc, model, x, y, F.cross_entropy, quick=quick)
    raise KeyError(name)


MODELS = ["resnet20", "transformer", "embedding"]

# ------------------------------------------------------------------------------ contenders


@dataclass
class Contender:
    name: str
    label: str
    make: Callable[[Task], Callable[[], None]]  # builds state, returns one step
    cycle: int = 1  # steps timed per round
    needs: Callable[[Task], str | None] = lambda task: None  # reason to skip, or None
    meta: dict[str, Any] = field(default_factory=dict)
    # Compiles on its first step: the memory subprocess runs one cycle before its baseline, so
    # that the compiler's own memory is not counted as the step's.
    compiles: bool = False
    # Another contender the run adds whenever this one is chosen (as it adds Adam): a compiled
    # contender is also compared with Adam on the same compiled model.
    reference: str | None = None


def _first_order(cls: Callable[..., torch.optim.Optimizer], **kw: Any) -> Callable:
    def make(task: Task) -> Callable[[], None]:
        model, opt = task.model, cls(task.model.parameters(), **kw)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            task.loss_fn(model(task.x), task.y).backward()
            opt.step()

        return step

    return make


def _adahessian(
    interval: int = 1, n: int = 1, fast_bn: bool = False, hessian_power: float = 1.0
) -> Callable:
    def make(task: Task) -> Callable[[], None]:
        model = use_fast_batchnorm(task.model) if fast_bn else task.model
        # lr 0.01: the step cost does not depend on lr, but at the default 0.15 the lazy
        # contenders reached NaN on the Transformer within 25 steps, and NaN is no fair time.
        opt = AdaHessian(model.parameters(), lr=0.01, update_interval=interval, n_samples=n,
                         seed=0, hessian_power=hessian_power)  # fmt: skip

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            task.loss_fn(model(task.x), task.y).backward(create_graph=opt.hessian_due)
            opt.step()

        return step

    return make


def _adahessian_batched(n: int) -> Callable:
    """Reverse-over-reverse with the probes batched into one double backward."""

    def make(task: Task) -> Callable[[], None]:
        model = task.model
        params = list(model.parameters())
        opt = AdaHessian(params, n_samples=n, seed=0)
        gen = torch.Generator().manual_seed(0)

        def step() -> None:
            loss = task.loss_fn(model(task.x), task.y)
            grads = torch.autograd.grad(loss, params, create_graph=True)
            diag = batched_hutchinson_diagonal(grads, params, n_samples=n, generator=gen)
            for p, g in zip(params, grads, strict=True):
                p.grad = g.detach()
            opt.step(hessian=diag)

        return step

    return make


def _adahessian_forward(n: int) -> Callable:
    def make(task: Task) -> Callable[[], None]:
        model = task.model
        params = [p for p in model.parameters() if p.requires_grad]
        opt = AdaHessian(params, n_samples=n, seed=0)
        gen = torch.Generator().manual_seed(0)

        def step() -> None:
            res = forward_hutchinson(
                model, lambda out: task.loss_fn(out, task.y), task.x, n_samples=n, generator=gen
            )
            for p, g in zip(params, res.grads, strict=True):
                p.grad = g
            opt.step(hessian=res.diagonal)

        return step

    return make


class _CompileClock:
    """Wall time of the calls during which dynamo compiled a graph."""

    def __init__(self) -> None:
        self.seconds, self.compiles = 0.0, 0

    def __call__(self, fn: Callable[[], None]) -> None:
        from torch._dynamo.utils import counters

        graphs = counters["stats"]["unique_graphs"]
        start = time.perf_counter()
        fn()
        if counters["stats"]["unique_graphs"] != graphs:
            self.seconds += time.perf_counter() - start
            self.compiles += 1


def _first_order_compiled(cls: Callable[..., torch.optim.Optimizer], **kw: Any) -> Callable:
    """A first-order optimizer on ``torch.compile(model)`` (the optimizer step eager)."""

    def make(task: Task) -> Callable[[], None]:
        backend = "aot_eager" if task.quick else "inductor"
        model = torch.compile(task.model, backend=backend, dynamic=False)
        opt = cls(task.model.parameters(), **kw)
        clock = _CompileClock()

        def once() -> None:
            opt.zero_grad(set_to_none=True)
            task.loss_fn(model(task.x), task.y).backward()
            opt.step()

        def step() -> None:
            clock(once)

        def report() -> dict[str, Any]:
            return {"backend": backend, "compile_s": clock.seconds, "compiles": clock.compiles}

        step.report = report  # type: ignore[attr-defined]
        return step

    return make


def _adahessian_compiled(interval: int, compile_plain: bool = False) -> Callable:
    """Forward-over-reverse under torch.compile (:class:`adahessian.CompiledCurvature`); plain
    steps are eager. The step function reports the compile time (``step.report()``)."""

    def make(task: Task) -> Callable[[], None]:
        model = task.model
        # The step cost does not depend on lr. With the default 0.15 and a ten-step-old
        # estimate the Transformer diverges within a few steps (the eager contenders too).
        opt = AdaHessian(model.parameters(), lr=0.01, update_interval=interval, seed=0)
        # --quick: the aot_eager backend traces the same graph but skips inductor's code
        # generation, which takes minutes on a small machine.
        backend = "aot_eager" if task.quick else "inductor"
        curv = CompiledCurvature(model, task.loss_fn, backend=backend, compile_plain=compile_plain)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            curv.backward(opt, task.x, task.y)
            opt.step()

        def report() -> dict[str, Any]:
            return {
                "backend": backend,
                "compile_s": curv.compile_seconds,
                "compiles": curv.compiles,
            }

        step.report = report  # type: ignore[attr-defined]
        return step

    return make


def _adahessian_fd(interval: int = 1, compiled: bool = False, **kw: Any) -> Callable:
    """Finite-difference Hessian-vector products (``hvp="finite-difference"``): stepped as
    ``opt.step(closure)`` with torch.optim's ordinary closure, which a Hessian step calls once
    more at θ + εv. ``compiled``: the model under ``torch.compile`` (inductor; aot_eager with
    --quick), the optimizer eager; the compile time is reported apart (``step.report()``).
    ``step.counts`` holds the number of steps and of the closure's calls (also in the report)."""

    def make(task: Task) -> Callable[[], None]:
        backend = "aot_eager" if task.quick else "inductor"
        model = (
            torch.compile(task.model, backend=backend, dynamic=False) if compiled else task.model
        )
        opt = AdaHessian(
            task.model.parameters(),
            **{"lr": 0.01, **kw},  # as _adahessian's
            update_interval=interval,
            seed=0,
            hvp="finite-difference",
        )
        clock = _CompileClock()
        counts = {"steps": 0, "closure_calls": 0}

        def closure() -> Tensor:
            counts["closure_calls"] += 1
            opt.zero_grad(set_to_none=True)
            loss = task.loss_fn(model(task.x), task.y)
            loss.backward()
            return loss

        def once() -> None:
            opt.step(closure)
            counts["steps"] += 1

        def step() -> None:
            if compiled:
                clock(once)
            else:
                once()

        def report() -> dict[str, Any]:
            out: dict[str, Any] = dict(counts)
            if compiled:
                out.update(backend=backend, compile_s=clock.seconds, compiles=clock.compiles)
            return out

        step.counts = counts  # type: ignore[attr-defined]
        step.optimizer = opt  # type: ignore[attr-defined]
        step.report = report  # type: ignore[attr-defined]
        return step

    return make


def _external(module: str, cls: str, **kw: Any) -> Callable:
    def make(task: Task) -> Callable[[], None]:
        opt_cls = getattr(importlib.import_module(module), cls)
        model, opt = task.model, opt_cls(task.model.parameters(), **kw)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            task.loss_fn(model(task.x), task.y).backward(create_graph=True)
            opt.step()

        return step

    return make


def _importable(module: str) -> Callable[[Task], str | None]:
    def needs(task: Task) -> str | None:
        try:
            importlib.import_module(module)
        except Exception as exc:  # not installed, or broken against this torch
            return f"{module} not importable ({type(exc).__name__})"
        return None

    return needs


def _needs_bn(task: Task) -> str | None:
    return None if task.has_batchnorm else "no BatchNorm in this model"


def contenders() -> list[Contender]:
    ror, fwd, bat, fbn, cfw = (
        "reverse-over-reverse",
        "forward-over-reverse",
        "reverse-over-reverse, batched probes",
        "reverse-over-reverse, fast BatchNorm",
        "forward-over-reverse, compiled",
    )
    fdf, cfd = "finite differences (forward)", "finite differences (forward), compiled model"
    out = [
        Contender("sgd", "SGD (momentum 0.9)", _first_order(torch.optim.SGD, lr=0.1, momentum=0.9)),
        Contender("adam", "Adam", _first_order(torch.optim.Adam, lr=1e-3)),
        Contender("adamw", "AdamW", _first_order(torch.optim.AdamW, lr=1e-3)),
        Contender("adahessian", "AdaHessian", _adahessian(), meta={"hvp": ror, "n": 1}),
        Contender(
            "adahessian-int10",
            "AdaHessian, update_interval 10",
            _adahessian(interval=10),
            cycle=10,
            meta={"hvp": ror, "n": 1, "interval": 10},
        ),
        Contender(
            "adahessian-fd",
            "AdaHessian, finite differences",
            _adahessian_fd(),
            meta={"hvp": fdf, "n": 1},
        ),
        Contender(
            "adahessian-fd-free",
            "AdaHessian, finite differences, the activation pattern not kept",
            _adahessian_fd(fd_keep_pattern=False),
            meta={"hvp": fdf, "n": 1},
        ),
        Contender(
            "adahessian-fd-int10",
            "AdaHessian, finite differences, update_interval 10",
            _adahessian_fd(interval=10),
            cycle=10,
            meta={"hvp": fdf, "n": 1, "interval": 10},
        ),
        Contender(
            "adahessian-n4", "AdaHessian, 4 probes", _adahessian(n=4), meta={"hvp": ror, "n": 4}
        ),
        Contender(
            "adahessian-batched-n4",
            "AdaHessian, 4 probes in one batched double backward",
            _adahessian_batched(4),
            meta={"hvp": bat, "n": 4},
        ),
        Contender(
            "adahessian-fwd",
            "AdaHessian, forward-over-reverse",
            _adahessian_forward(1),
            meta={"hvp": fwd, "n": 1},
        ),
        Contender(
            "adahessian-fwd-n4",
            "AdaHessian, forward-over-reverse, 4 probes (vmap)",
            _adahessian_forward(4),
            meta={"hvp": fwd, "n": 4},
        ),
        Contender(
            "adahessian-compiled",
            "AdaHessian, compiled forward-over-reverse",
            _adahessian_compiled(1),
            meta={"hvp": cfw, "n": 1},
            compiles=True,
        ),
        Contender(
            "adahessian-compiled-int10",
            "AdaHessian, compiled forward-over-reverse, update_interval 10",
            _adahessian_compiled(10),
            cycle=10,
            meta={"hvp": cfw, "n": 1, "interval": 10},
            compiles=True,
        ),
        Contender(
            "adahessian-compiled-all-int10",
            "AdaHessian, compiled forward-over-reverse and plain steps, update_interval 10",
            _adahessian_compiled(10, compile_plain=True),
            cycle=10,
            meta={"hvp": cfw, "n": 1, "interval": 10},
            compiles=True,
        ),
        Contender(
            "adam-compiled",
            "Adam on torch.compile(model)",
            _first_order_compiled(torch.optim.Adam, lr=1e-3),
            compiles=True,
        ),
        Contender(
            "adahessian-fd-compiled",
            "AdaHessian, finite differences, on torch.compile(model)",
            # lr as adahessian-compiled's (the step cost does not depend on it)
            _adahessian_fd(compiled=True, lr=0.01),
            meta={"hvp": cfd, "n": 1},
            compiles=True,
            reference="adam-compiled",
        ),
        Contender(
            "adahessian-fastbn",
            "AdaHessian, fast BatchNorm",
            _adahessian(fast_bn=True),
            needs=_needs_bn,
            meta={"hvp": fbn, "n": 1},
        ),
        Contender(
            "adahessian-fastbn-n4",
            "AdaHessian, fast BatchNorm, 4 probes",
            _adahessian(n=4, fast_bn=True),
            needs=_needs_bn,
            meta={"hvp": fbn, "n": 4},
        ),
        Contender(
            "adahessian-fastbn-int10",
            "AdaHessian, fast BatchNorm, update_interval 10",
            _adahessian(interval=10, fast_bn=True),
            cycle=10,
            needs=_needs_bn,
            meta={"hvp": fbn, "n": 1, "interval": 10},
        ),
        Contender(
            "adahessian-k05",
            "AdaHessian, k = 0.5 (torch-optimizer's default)",
            _adahessian(hessian_power=0.5),
            meta={"hvp": ror, "n": 1},
        ),
        Contender(
            "torch-optimizer",
            "torch-optimizer Adahessian (k = 0.5)",
            _external("torch_optimizer", "Adahessian"),
            needs=_importable("torch_optimizer"),
            meta={"hvp": ror, "n": 1, "external": True},
        ),
        Contender(
            "pytorch-optimizer",
            "pytorch-optimizer AdaHessian",
            _external("pytorch_optimizer", "AdaHessian"),
            needs=_importable("pytorch_optimizer"),
            meta={"hvp": ror, "n": 1, "external": True},
        ),
    ]
    return out


# ----------------------------------------------------------------------------------- memory


def _status_kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        return False
    return True


def measure_memory_here(task_name: str, contender_name: str, quick: bool) -> dict:
    """Run in a fresh process: peak resident memory above the baseline (the resident size before
    the first step), over the first two steps; for a contender with a cycle (``update_interval``
    10), also over the plain steps of a whole cycle after its first (Hessian) step."""
    task = make_task(task_name, quick)
    contender = {c.name: c for c in contenders()}[contender_name]
    out: dict[str, Any] = {}
    with task.context():
        step = contender.make(task)
        if contender.compiles:  # compile first: the compiler's memory is not the step's
            for _ in range(contender.cycle):
                step()
            out["warmed_up"] = True
        gc.collect()
        base = _status_kib("VmRSS")
        out["peak_reset"] = _reset_peak()
        step()
        if contender.cycle > 1:  # the first step was the Hessian step; the next are plain
            hessian_peak = _status_kib("VmHWM")
            _reset_peak()
            for _ in range(contender.cycle - 1):
                step()
            plain_peak = _status_kib("VmHWM")
            out["plain_step_peak_above_baseline_mib"] = max(plain_peak - base, 0) / 1024
            peak = max(hessian_peak, plain_peak)
        else:
            step()
            peak = _status_kib("VmHWM")
    out["peak_above_baseline_mib"] = max(peak - base, 0) / 1024
    return out


# glibc keeps freed blocks below its (dynamic, up to 32 MiB) mmap threshold in the heap, so the
# resident size of a process measures what the allocator held on to, not what tensors used: a
# large transient allocation freed early inflated the peak of one contender and not another. A
# fixed threshold of 64 KiB serves every tensor of any size from mmap and gives it back on free,
# so the resident size follows the live tensors (the same setting for every contender).
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def measure_memory(task_name: str, contender_name: str, quick: bool) -> dict:
    cmd = [sys.executable, __file__, "--_memory", task_name, contender_name]
    cmd += ["--threads", str(torch.get_num_threads())]
    if quick:
        cmd.append("--quick")
    env = {**os.environ, **MEMORY_ENV}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=env)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return {"peak_above_baseline_mib": None, "error": tail[:300]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------- timing


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _error(exc: BaseException) -> str:
    """A contender's status after ``exc``: its type and the first line of its message (which may
    be empty, as an assertion's is)."""
    first = (str(exc).splitlines() or [""])[0]
    return f"error: {type(exc).__name__}: {first[:200]}"


def run_task(
    task_name: str, names: list[str], quick: bool, rounds: int, warmup: int, memory: bool
) -> dict:
    base = make_task(task_name, quick)
    n_params = sum(p.numel() for p in base.model.parameters())
    results: dict[str, dict[str, Any]] = {}
    steps: dict[str, Callable[[], None]] = {}
    all_contenders = {c.name: c for c in contenders()}
    for name in names:
        c = all_contenders[name]
        entry: dict[str, Any] = {"label": c.label, "cycle": c.cycle, **c.meta, "status": "ok"}
        results[name] = entry
        reason = c.needs(base)
        if reason is not None:
            entry["status"] = f"skipped: {reason}"
            continue
        task = copy.copy(base)
        task.model = copy.deepcopy(base.model)
        try:
            with task.context():
                steps[name] = c.make(task)
        except Exception as exc:
            entry["status"] = _error(exc)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for r in range(warmup + rounds):
        live = list(steps)
        k = r % max(len(live), 1)
        for name in live[k:] + live[:k]:  # rotate the order each round
            cycle = all_contenders[name].cycle
            try:
                with base.context():
                    start = time.perf_counter()
                    for _ in range(cycle):
                        steps[name]()
                    elapsed = (time.perf_counter() - start) / cycle
            except Exception as exc:
                results[name]["status"] = _error(exc)
                del steps[name]
                continue
            if r >= warmup:
                times[name].append(elapsed)
    for name, step in steps.items():
        report = getattr(step, "report", None)
        if report is not None:
            results[name].update(report())
    adam = statistics.median(times["adam"]) if times.get("adam") else None
    for name, entry in results.items():
        ts = times.get(name) or []
        if entry["status"] == "ok" and ts:
            med = statistics.median(ts)
            entry["median_step_s"] = med
            entry["times_s"] = ts
            entry["relative_to_adam"] = med / adam if adam else None
        else:
            entry.setdefault("median_step_s", None)
            entry.setdefault("relative_to_adam", None)
        entry["peak_above_baseline_mib"] = None
        if memory and entry["status"] == "ok":
            entry.update(measure_memory(task_name, name, quick))
    # A compiled contender is also compared with Adam on the same compiled model.
    adam_compiled = results.get("adam-compiled", {})
    for name, entry in results.items():
        if name == "adam-compiled" or not all_contenders[name].compiles:
            continue
        med, ref = entry.get("median_step_s"), adam_compiled.get("median_step_s")
        entry["relative_to_adam_compiled"] = med / ref if med is not None and ref else None
    return {"description": base.description, "parameters": n_params, "results": results}


def _ratio(value: float | None, reference: float | None) -> str:
    return "-" if value is None or not reference else f"{value / reference:.2f}"


def markdown(report: dict) -> str:
    meta = report["meta"]
    lines = [
        f"Step cost relative to Adam (median of {meta['rounds']} interleaved rounds after "
        f"{meta['warmup']} warm-up rounds; peak memory above baseline from one subprocess per "
        "contender).",
        "",
        f"- torch {meta['torch']}, {meta['threads']} threads, CPU: {meta['cpu']}",
        f"- run at {meta['date']}{' (--quick sizes)' if meta['quick'] else ''}",
        "",
    ]
    for task_name, task in report["models"].items():
        adam_mem = task["results"].get("adam", {}).get("peak_above_baseline_mib")
        lines += [
            f"### {task_name}: {task['description']} ({task['parameters']:,} parameters)",
            "",
            "| contender | HVP path | probes | step time / Adam | median step (ms) | "
            "peak memory above baseline (MiB) | memory / Adam | plain steps: memory / Adam |",
            "|---|---|---:|---:|---:|---:|---:|---:|",
        ]
        for entry in task["results"].values():
            if entry["status"] != "ok":
                hvp = entry.get("hvp", "-")
                lines.append(f"| {entry['label']} | {hvp} | | {entry['status']} | | | | |")
                continue
            rel = entry["relative_to_adam"]
            mem = entry["peak_above_baseline_mib"]
            lines.append(
                f"| {entry['label']} | {entry.get('hvp', '-')} | {entry.get('n', '-')} | "
                f"{'-' if rel is None else f'{rel:.2f}'} | {entry['median_step_s'] * 1e3:.1f} | "
                f"{'-' if mem is None else f'{mem:.0f}'} | {_ratio(mem, adam_mem)} | "
                f"{_ratio(entry.get('plain_step_peak_above_baseline_mib'), adam_mem)} |"
            )
        lines.append("")
        adam_compiled_mem = task["results"].get("adam-compiled", {}).get("peak_above_baseline_mib")
        for entry in task["results"].values():
            if entry.get("relative_to_adam_compiled") is not None:
                lines.append(
                    f"- {entry['label']}: step time / compiled Adam "
                    f"{entry['relative_to_adam_compiled']:.2f}, memory / compiled Adam "
                    f"{_ratio(entry.get('peak_above_baseline_mib'), adam_compiled_mem)}"
                )
        for entry in task["results"].values():
            if entry.get("compile_s") is not None and entry.get("compiles") == 0:
                # torch.compile(model) of another copy of the same model compiled the graph
                # first (dynamo reuses it: the parameters are inputs, not guards)
                lines.append(
                    f"- {entry['label']}: compiled nothing of its own (backend "
                    f"{entry['backend']}; it ran the graph that another contender compiled for "
                    "the same model code)"
                )
            elif entry.get("compile_s") is not None:
                lines.append(
                    f"- {entry['label']}: compiled in {entry['compile_s']:.1f} s "
                    f"({entry['compiles']} graph(s), backend {entry['backend']}; compile time "
                    "is not in the step times)"
                )
        if lines[-1] != "":
            lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few rounds")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--contenders", default=None, help="comma-separated names (default all)")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: on a shared machine, threads wait on each other)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--markdown", default=None, help="write the table here")
    parser.add_argument("--_memory", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args._memory:
        print(json.dumps(measure_memory_here(*args._memory, quick=args.quick)))
        return None

    names = [c.name for c in contenders()]
    if args.contenders:
        wanted = args.contenders.split(",")
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            parser.error(f"unknown contenders {unknown}; known: {names}")
        names = [n for n in names if n in wanted]
    if "adam" not in names:
        names.insert(0, "adam")  # the reference for the ratios
    by_name = {c.name: c for c in contenders()}
    for name in list(names):  # e.g. adam-compiled, for the compiled contenders' second ratio
        ref = by_name[name].reference
        if ref is not None and ref not in names:
            names.insert(names.index(name), ref)
    models = args.models.split(",")
    unknown = sorted(set(models) - set(MODELS))
    if unknown:
        parser.error(f"unknown models {unknown}; known: {MODELS}")
    rounds = args.rounds if args.rounds is not None else (2 if args.quick else 5)
    warmup = args.warmup if args.warmup is not None else 1

    report: dict[str, Any] = {
        "meta": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": cpu_model(),
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "quick": args.quick,
            "rounds": rounds,
            "warmup": warmup,
            "memory": not args.no_memory,
        },
        "models": {},
    }
    for model in models:
        report["models"][model] = run_task(
            model, names, args.quick, rounds, warmup, memory=not args.no_memory
        )
        print(f"done: {model}", file=sys.stderr, flush=True)
    table = markdown(report)
    print(table)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return report


if __name__ == "__main__":
    main()
