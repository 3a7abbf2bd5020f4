"""AdaHessian with finite-difference Hessian-vector products in the harness: the profile keys
(``hvp``, ``fd_eps``, ``fd_scheme``) and their checks, the ``adahessian-fd`` variants of the quick
profiles, the closure step of the training loop, and the step-cost measurement of the variants."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from adahessian import AdaHessian
from adahessian_bench import base, cli, config, stepcost, steptime, train
from adahessian_bench import task_language_model as lm
from adahessian_bench.step import training_step
from adahessian_bench.tasks import TASKS

FD = "finite-difference"
IMAGES = {"epochs": 2, "batch_size": 16, "milestones": [1], "gamma": 0.5, "train_subset": 200,
          "test_subset": 100, "eval_batch_size": 50}  # fmt: skip


def resolve(tables: dict[str, dict[str, Any]], **train_keys: Any) -> dict[str, Any]:
    profile = {"train": {**IMAGES, **train_keys}, "optimizers": tables}
    return train.resolve("fmnist-resnet20", profile, "quick", list(tables), 1, max_steps=3)


def test_the_profile_takes_hvp_fd_eps_and_fd_scheme() -> None:
    tables = {
        "adahessian": {"lr": 0.1, "hvp": "autograd"},
        "adahessian-fd": {"lr": 0.1, "hvp": FD},
        "adahessian-fd-central": {"lr": 0.1, "hvp": FD, "fd_eps": 1e-2, "fd_scheme": "central"},
        "adahessian-fd-one": {"lr": 0.1, "hvp": FD, "fd_eps": 1, "fd_scheme": "forward"},
        "adahessian-fd-free": {"lr": 0.1, "hvp": FD, "fd_keep_pattern": False},
    }
    cfg = resolve(tables)
    assert cfg["optimizers"] == tables
    opt = train.optimizers.build("adahessian-fd-central", [torch.nn.Parameter(torch.zeros(2))],
                                 cfg["optimizers"]["adahessian-fd-central"], seed=0)  # fmt: skip
    assert isinstance(opt, AdaHessian)
    assert (opt.hvp, opt.fd_eps, opt.fd_scheme) == (FD, 1e-2, "central")
    assert opt.fd_keep_pattern
    free = train.optimizers.build("adahessian-fd-free", [torch.nn.Parameter(torch.zeros(2))],
                                  cfg["optimizers"]["adahessian-fd-free"], seed=0)  # fmt: skip
    assert isinstance(free, AdaHessian) and not free.fd_keep_pattern


@pytest.mark.parametrize(
    "hp,message",
    [
        ({"hvp": "exact"}, r"hvp: Invalid hvp: 'exact' \(must be one of 'autograd', "),
        ({"hvp": 1}, r"hvp: Invalid hvp: 1 "),
        ({"hvp": FD, "fd_eps": 0}, r"fd_eps: Invalid fd_eps: 0 \(must be .*a number in \(0, 1\]"),
        ({"hvp": FD, "fd_eps": -1e-3}, r"fd_eps: Invalid fd_eps: -0.001 "),
        ({"hvp": FD, "fd_eps": 1.5}, r"fd_eps: Invalid fd_eps: 1.5 "),
        ({"hvp": FD, "fd_eps": "1e-3"}, r"fd_eps: Invalid fd_eps: '1e-3' "),
        ({"hvp": FD, "fd_eps": True}, r"fd_eps: Invalid fd_eps: True "),
        ({"hvp": FD, "fd_scheme": "backward"},
         r"fd_scheme: Invalid fd_scheme: 'backward' \(must be one of forward, central\)"),
        ({"fd_eps": 1e-3}, r'fd_eps: only used with hvp = "finite-difference" \(here hvp is '),
        ({"hvp": "autograd", "fd_scheme": "central"}, r"fd_scheme: only used with hvp = "),
        ({"fd_keep_pattern": False}, r"fd_keep_pattern: only used with hvp = "),
        ({"hvp": FD, "fd_keep_pattern": "no"},
         r"fd_keep_pattern: fd_keep_pattern must be True or False, got 'no'"),
        ({"hvp": FD, "fd_step": 1e-3}, r"fd_step: unknown key \(did you mean fd_"),
    ],
)  # fmt: skip
def test_bad_values_are_refused_naming_the_table_and_key(hp: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=r"\[optimizers\.adahessian-fd\] " + message):
        resolve({"adahessian": {"lr": 0.1}, "adahessian-fd": {"lr": 0.1, **hp}})


def test_a_bad_value_in_a_profile_file_ends_the_command_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    profile = tmp_path / "bad.toml"
    profile.write_text(
        'task = "fmnist-resnet20"\n[train]\nepochs = 1\nbatch_size = 16\nmilestones = [1]\n'
        'gamma = 0.5\n[optimizers.adahessian-fd]\nlr = 0.1\nhvp = "finite-difference"\n'
        "fd_eps = 0.0\n"
    )
    out = tmp_path / "out"
    argv = ["run", "fmnist-resnet20", "--config", str(profile), "--out", str(out)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("adahessian-bench run: error: ") and len(err.splitlines()) == 1
    assert "[optimizers.adahessian-fd] fd_eps: Invalid fd_eps: 0.0" in err
    assert not out.exists()


def without(hp: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in hp.items() if k not in keys}


@pytest.mark.parametrize("task", list(TASKS))
def test_every_quick_profile_has_both_finite_difference_variants(task: str) -> None:
    """``adahessian-fd``: the paper's AdaHessian of the profile, ``adahessian-fd-lazy``: its lazy
    setting (the recommended setup where the profile has none), both with hvp finite-difference."""
    opts = config.load(task, "quick")["optimizers"]
    fd, lazy = opts["adahessian-fd"], opts["adahessian-fd-lazy"]
    assert fd["hvp"] == FD and lazy["hvp"] == FD
    assert without(fd, "hvp") == opts["adahessian"]
    if "adahessian-lazy" in opts:
        assert without(lazy, "hvp") == opts["adahessian-lazy"]
    else:
        assert without(lazy, "hvp", "update_interval", "hessian_warmup") == without(
            opts["adahessian"], "update_interval"
        )
        assert lazy["update_interval"] == 10 and lazy["hessian_warmup"] > 0
    cfg = train.resolve(task, config.load(task, "quick"), "quick", list(opts), 1)
    names = [name for name, _, _ in stepcost.contenders(cfg)]
    assert {"adahessian-fd", "adahessian-fd-lazy"} <= set(names)
    assert "adahessian-fd" not in config.load(task, "paper")["optimizers"]


class Spy:
    """Every AdaHessian.step: (hvp, Hessian step due, a closure given, calls of the closure);
    and every backward's create_graph."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.steps: list[tuple[str, bool, bool, int]] = []
        self.create_graph: list[bool] = []
        step, backward = AdaHessian.step, torch.Tensor.backward

        def spy_step(opt: AdaHessian, closure: Callable[[], Any] | None = None, **kw: Any) -> Any:
            calls = [0]

            def counted() -> Any:
                calls[0] += 1
                assert closure is not None
                return closure()

            due = opt.hessian_due
            out = step(opt, counted if closure is not None else None, **kw)
            self.steps.append((opt.hvp, due, closure is not None, calls[0]))
            return out

        def spy_backward(t: torch.Tensor, *args: Any, **kw: Any) -> Any:
            self.create_graph.append(bool(kw.get("create_graph", False)))
            return backward(t, *args, **kw)

        monkeypatch.setattr(AdaHessian, "step", spy_step)
        monkeypatch.setattr(torch.Tensor, "backward", spy_backward)


def test_a_tiny_run_trains_through_the_closure_and_the_step_cost_lists_the_variants(
    data_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tables = {
        "adahessian-fd": {"lr": 0.1, "hvp": FD},
        "adahessian-fd-lazy": {"lr": 0.1, "hvp": FD, "update_interval": 2, "hessian_warmup": 1},
    }
    cfg = resolve(tables, cost_rounds=10)
    spy = Spy(monkeypatch)
    train.run(cfg, tmp_path, progress=False)

    # Every step: the finite-difference optimizer, with the closure, called twice on a Hessian
    # step (at θ and θ + εv) and once on a plain one; no gradient graph kept anywhere.
    assert spy.steps and all(hvp == FD and closure for hvp, _, closure, _ in spy.steps)
    assert all(calls == (2 if due else 1) for _, due, _, calls in spy.steps)
    assert spy.create_graph and not any(spy.create_graph)
    # The measurement (3 contenders x 2 rounds), then 2 runs x 2 epochs x 3 steps: the lazy run
    # takes the Hessian at steps 0 (warm-up), 1, 3 and 5 (every 2nd after it), and not at 2 and 4.
    training = spy.steps[6:]
    assert len(training) == 12
    assert [due for _, due, _, _ in training] == [True] * 6 + [True, True, False, True, False, True]

    torch.manual_seed(0)
    initial = TASKS["fmnist-resnet20"].model()  # seed 0's initial weights
    for name in tables:
        lines = (tmp_path / f"{name}-seed0" / "metrics.jsonl").read_text().splitlines()
        metrics = [json.loads(line) for line in lines]
        assert [m["step"] for m in metrics] == [3, 6]
        assert all(math.isfinite(m["train_loss"]) and 0 <= m["test_acc"] <= 1 for m in metrics)
        ckpt = torch.load(tmp_path / f"{name}-seed0" / "checkpoint.pt", weights_only=True)
        moved = [not torch.equal(ckpt["model"][k], v) for k, v in initial.state_dict().items()]
        assert all(moved[:3]) and sum(moved) > len(moved) // 2  # it trained

    cost = json.loads((tmp_path / steptime.COST_FILE).read_text())
    assert set(cost["optimizers"]) == set(tables)
    assert {"adahessian-fd:hessian", "adahessian-fd-lazy:hessian",
            "adahessian-fd-lazy:plain"} == set(cost["samples_s"])  # fmt: skip
    for c in cost["optimizers"].values():
        assert c["hessian_step_s"] > 0 and c["plain_step_s"] > 0


def test_the_closure_step_carries_a_recurrent_state_as_one_pass_would() -> None:
    """Each pass of a finite-difference step starts from the batch's incoming hidden state, and
    the next batch gets the state of the pass at θ (the LSTM's truncated BPTT)."""

    class Recorded(lm.RecurrentLoss):
        def __init__(self) -> None:
            super().__init__()
            self.seen: list[Any] = []

        def __call__(self, model: torch.nn.Module, batch: Any) -> Any:
            self.seen.append(self.state)
            return super().__call__(model, batch)

    torch.manual_seed(0)
    model = TASKS["brown-lm-lstm"].model(arch="lstm", vocab=40, d_model=8, dropout=0.0)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(40, (2, 5), generator=g), torch.randint(40, (2, 5), generator=g))
               for _ in range(2)]  # fmt: skip
    loss_fn = Recorded()
    setup = base.Setup([], loss_fn, lambda m: {})
    opt = AdaHessian(model.parameters(), lr=0.01, hvp=FD)
    training_step(setup, model, opt, batches[0])
    incoming = loss_fn.state
    assert incoming is not None and loss_fn.seen == [None, None]  # two passes, from zeros
    # The pass at θ, recorded (CPU LSTM kernels differ in the last bit without it).
    logits, state = model(batches[1][0], incoming)
    want = torch.nn.functional.cross_entropy(logits.reshape(-1, 40), batches[1][1].reshape(-1))
    model.zero_grad()
    got, stats = training_step(setup, model, opt, batches[1])
    assert len(loss_fn.seen) == 4 and all(s is incoming for s in loss_fn.seen[2:])
    assert torch.equal(got, want.detach()) and stats == {"n": 10}
    assert all(torch.equal(a, b) for a, b in zip(loss_fn.state, state, strict=True))
