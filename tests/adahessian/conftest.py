"""Tiny float64 models whose exact Hessian is affordable, shared by the estimator tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, hessian


class LastStep(nn.Module):
    """Recurrent layer, then a readout of the last time step."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(3, 4, batch_first=True)
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


class MeanEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(6, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.tanh(self.emb(x)).mean(1))


@dataclass
class Case:
    model: nn.Module
    x: Tensor
    y: Tensor
    loss_fn: Callable[[Tensor, Tensor], Tensor]

    def loss(self) -> Tensor:
        return self.loss_fn(self.model(self.x), self.y)

    def params(self) -> list[Tensor]:
        return list(self.model.parameters())

    def _flat_loss(self) -> tuple[Callable[[Tensor], Tensor], Tensor]:
        names = [n for n, _ in self.model.named_parameters()]
        shapes = [p.shape for p in self.model.parameters()]
        sizes = [p.numel() for p in self.model.parameters()]
        theta = torch.cat([p.detach().flatten() for p in self.model.parameters()])

        def f(flat: Tensor) -> Tensor:
            chunks = flat.split(sizes)
            params = {n: c.view(s) for n, c, s in zip(names, chunks, shapes, strict=True)}
            return self.loss_fn(functional_call(self.model, params, (self.x,)), self.y)

        return f, theta

    def exact_hessian(self) -> Tensor:
        """The full Hessian over all parameters, flattened in parameters() order, one row per
        plain double-backward call (no vmap). Checked against finite differences and
        ``torch.func.hessian`` in test_hutchinson.py."""
        f, theta = self._flat_loss()
        theta = theta.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(f(theta), theta, create_graph=True)
        rows = [torch.autograd.grad(g[i], theta, retain_graph=True)[0] for i in range(len(g))]
        return torch.stack(rows)

    def func_hessian(self) -> Tensor:
        f, theta = self._flat_loss()
        return hessian(f)(theta)

    def finite_difference_hessian(self, step: float = 1e-5) -> Tensor:
        """Central differences of the (exact, first-order) gradient."""
        f, theta = self._flat_loss()

        def grad(th: Tensor) -> Tensor:
            th = th.clone().requires_grad_(True)
            return torch.autograd.grad(f(th), th)[0]

        eye = torch.eye(len(theta), dtype=theta.dtype)
        cols = [(grad(theta + step * e) - grad(theta - step * e)) / (2 * step) for e in eye]
        return torch.stack(cols, dim=1)


def _case(name: str) -> Case:
    g = torch.Generator().manual_seed(0)
    mse = nn.functional.mse_loss
    xent = nn.functional.cross_entropy

    def randn(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    classes = torch.randint(0, 2, (5,), generator=g)
    if name == "linear":
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
        return Case(model.double(), randn(6, 3), randn(6, 2), mse)
    if name == "conv1d":
        model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Tanh(), nn.Flatten(), nn.Linear(9, 2))
        return Case(model.double(), randn(5, 2, 5), classes, xent)
    if name == "conv2d":
        model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8, 2))
        return Case(model.double(), randn(5, 1, 4, 4), classes, xent)
    if name == "conv3d":
        model = nn.Sequential(nn.Conv3d(1, 2, 2), nn.Tanh(), nn.Flatten(), nn.Linear(16, 2))
        return Case(model.double(), randn(5, 1, 3, 3, 3), classes, xent)
    if name == "layernorm":
        model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 2))
        return Case(model.double(), randn(6, 3), randn(6, 2), mse)
    if name == "embedding":
        tokens = torch.randint(0, 6, (5, 4), generator=g)
        return Case(MeanEmbedding().double(), tokens, classes, xent)
    if name == "rnn":
        return Case(LastStep().double(), randn(5, 4, 3), classes, xent)
    raise KeyError(name)


CASES = ["linear", "conv1d", "conv2d", "conv3d", "layernorm", "embedding", "rnn"]


@pytest.fixture(params=CASES)
def case(request: pytest.FixtureRequest) -> Case:
    torch.manual_seed(0)
    return _case(request.param)


@pytest.fixture
def make_case() -> Callable[[str], Case]:
    """Build one named case (for tests that need a specific model)."""
    return _case


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread, for tests of tiny tensors: faster, and on a busy machine two threads
    spend most of their time waiting for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- two gloo ranks


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def two_ranks(tmp_path: Path) -> Callable[..., list[dict | None]]:
    """Run a worker script as two gloo ranks on loopback: ``two_ranks(worker, scenario)`` returns
    each rank's JSON result (None for a rank that wrote none). Both must exit 0 unless
    ``must_succeed=False``; a rank that hangs fails the test."""

    def launch(worker: Path, scenario: str, *, must_succeed: bool = True) -> list[dict | None]:
        port = _free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    str(worker),
                    "--rank",
                    str(r),
                    "--port",
                    str(port),
                    "--scenario",
                    scenario,
                    "--out",
                    str(tmp_path / f"rank{r}.json"),
                ],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for r in range(2)
        ]
        logs = []
        for p in procs:
            try:
                logs.append(p.communicate(timeout=120)[0])
            except subprocess.TimeoutExpired:
                for q in procs:
                    q.kill()
                pytest.fail(f"scenario {scenario}: a rank hung")
        results: list[dict | None] = []
        for r, p in enumerate(procs):
            out = tmp_path / f"rank{r}.json"
            results.append(json.loads(out.read_text()) if out.exists() else None)
            if must_succeed:
                assert p.returncode == 0, logs[r][-3000:]
        return results

    return launch
