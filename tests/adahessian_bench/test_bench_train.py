"""The training loop with any task: learning-rate schedules, and a task defined in the test."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from adahessian_bench import base, config, results, tasks, train


def lrs(schedule: dict[str, Any], steps: int, steps_per_epoch: int = 5) -> list[float]:
    """The lr of each of ``steps`` optimizer steps under ``schedule``."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched, per_step = train.make_scheduler(opt, {"epochs": 4, **schedule}, steps_per_epoch)
    out = []
    for i in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if per_step or (i + 1) % steps_per_epoch == 0:
            sched.step()
    return out


def test_inverse_sqrt_warms_up_linearly_then_decays_as_one_over_sqrt_step() -> None:
    got = lrs({"schedule": "inverse_sqrt", "warmup_steps": 4}, 16)
    want = [2.0 * s / 4 for s in range(1, 5)] + [2.0 * math.sqrt(4 / s) for s in range(5, 17)]
    assert got == pytest.approx(want)


def test_cosine_reaches_zero_at_the_last_step_and_multistep_decays_per_epoch() -> None:
    got = lrs({"schedule": "cosine", "warmup_steps": 2}, 20)  # 4 epochs x 5 steps
    assert got[:2] == pytest.approx([1.0, 2.0])
    assert got[-1] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in itertools.pairwise(got[1:]))
    got = lrs({"schedule": "multistep", "milestones": [2], "gamma": 0.5}, 20)
    assert got == pytest.approx([2.0] * 10 + [1.0] * 10)
    assert lrs({"schedule": "constant"}, 7) == [2.0] * 7


def test_unknown_schedule_is_refused_before_anything_runs() -> None:
    profile = {"train": {"epochs": 1, "batch_size": 8, "schedule": "linear"},
               "optimizers": {"adam": {"lr": 1e-3}}}  # fmt: skip
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        train.resolve("fmnist-resnet20", profile, "quick", ["adam"], 1)


class Regression(base.Task):
    """A least-squares task whose metric (test MSE) is lower-is-better."""

    name = "toy-regression"
    dataset = "none"
    description = "y = x w + noise"
    metric = base.Metric("test_mse", "test MSE", higher_is_better=False, scale=1.0, fmt=".4f")

    def load(self, cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(96, 4, generator=g)
        return {"x": x, "y": x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.01}

    def model(self, **kwargs: Any) -> nn.Module:
        return nn.Linear(4, 1)

    def setup(self, dataset, ctx: base.RunContext) -> base.Setup:
        x, y = dataset["x"][:64], dataset["y"][:64]
        bs, generator = ctx.batch_size, ctx.generator

        class Batches:
            def __len__(self) -> int:
                return len(x) // bs

            def __iter__(self):
                order = torch.randperm(len(x), generator=generator)
                for i in range(len(self)):
                    idx = order[i * bs : (i + 1) * bs]
                    yield x[idx], y[idx]

        def loss(model: nn.Module, batch: Any) -> tuple[torch.Tensor, dict[str, float]]:
            xb, yb = batch
            return ((model(xb).squeeze(1) - yb) ** 2).mean(), {"n": len(yb)}

        def evaluate(model: nn.Module) -> dict[str, float]:
            with torch.no_grad():
                mse = ((model(dataset["x"][64:]).squeeze(1) - dataset["y"][64:]) ** 2).mean()
            return {"test_mse": mse.item()}

        return base.Setup(Batches(), loss, evaluate)


def test_a_new_task_runs_through_the_loop_with_its_own_metric(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(tasks.TASKS, "toy-regression", Regression())
    monkeypatch.setitem(train.TASKS, "toy-regression", tasks.TASKS["toy-regression"])
    profile = {"train": {"epochs": 10, "batch_size": 16, "schedule": "constant"},
               "optimizers": {"adam": {"lr": 0.3}, "adahessian": {"lr": 0.5}}}  # fmt: skip
    cfg = train.resolve("toy-regression", profile, "quick", ["adam", "adahessian"], 1)
    assert cfg["metric"]["key"] == "test_mse" and cfg["metric"]["higher_is_better"] is False
    train.run(cfg, tmp_path, progress=False)
    for opt in ("adam", "adahessian"):
        lines = (tmp_path / f"{opt}-seed0" / "metrics.jsonl").read_text().splitlines()
        metrics = [json.loads(line) for line in lines]
        assert [m["step"] for m in metrics] == [4 * e for e in range(1, 11)]
        assert "train_acc" not in metrics[0]  # only the statistics the task gives
        # A well-conditioned least-squares problem: both optimizers cut the error 10-fold.
        assert metrics[-1]["test_mse"] < 0.1 * metrics[0]["test_mse"]


def test_run_context_gives_each_rank_its_shard_and_share_of_the_batch() -> None:
    cfg = {"train": {"batch_size": 16}}
    items = torch.arange(10)
    alone = base.RunContext(cfg, torch.device("cpu"), torch.Generator())
    assert alone.batch_size == 16 and alone.shard(items) is items
    ranks = [base.RunContext(cfg, torch.device("cpu"), torch.Generator(), r, 3) for r in range(3)]
    assert [c.batch_size for c in ranks] == [5, 5, 5]
    assert [c.shard(items).tolist() for c in ranks] == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]
    with pytest.raises(AttributeError):
        alone.rank = 1  # type: ignore[misc]  # a frozen record


def test_the_metrics_lr_is_the_lr_of_the_epochs_last_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(tasks.TASKS, "toy-regression", Regression())
    monkeypatch.setitem(train.TASKS, "toy-regression", tasks.TASKS["toy-regression"])
    per_step = {"epochs": 3, "batch_size": 16, "schedule": "inverse_sqrt", "warmup_steps": 6}
    per_epoch = {"epochs": 3, "batch_size": 16, "milestones": [1], "gamma": 0.1}
    for name, tc, want in [
        # 4 steps per epoch: the last steps are 4, 8, 12; warm-up to step 6, then sqrt(6 / s).
        ("inverse_sqrt", per_step, [0.3 * 4 / 6, 0.3 * math.sqrt(6 / 8), 0.3 * math.sqrt(6 / 12)]),
        ("multistep", per_epoch, [0.3, 0.03, 0.03]),
    ]:
        cfg = train.resolve("toy-regression", {"train": tc, "optimizers": {"adam": {"lr": 0.3}}},
                            "quick", ["adam"], 1)  # fmt: skip
        train.run(cfg, tmp_path / name, progress=False)
        lines = (tmp_path / name / "adam-seed0" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["lr"] for line in lines] == pytest.approx(want), name


def test_eval_every_adds_evaluations_within_the_epoch_and_leaves_training_as_it_was(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(tasks.TASKS, "toy-regression", Regression())
    monkeypatch.setitem(train.TASKS, "toy-regression", tasks.TASKS["toy-regression"])
    tc = {"epochs": 3, "batch_size": 16, "schedule": "constant"}  # 4 steps per epoch
    opts = {"adam": {"lr": 0.3}, "adahessian": {"lr": 0.5}}

    def lines(eval_every: int, out: Path) -> dict[str, list[dict[str, Any]]]:
        profile = {"train": {**tc, "eval_every": eval_every}, "optimizers": opts}
        cfg = train.resolve("toy-regression", profile, "quick", list(opts), 1)
        train.run(cfg, out, progress=False)
        return {o: [json.loads(x) for x in (out / f"{o}-seed0" / "metrics.jsonl").open()]
                for o in opts}  # fmt: skip

    plain, fine = lines(0, tmp_path / "plain"), lines(3, tmp_path / "fine")
    for opt in opts:
        # Steps 3, 6 and 9 are evaluated within their epochs; step 12 ends the last epoch.
        assert [(m["kind"], m["epoch"], m["step"]) for m in fine[opt]] == [
            ("eval", 0.75, 3), ("epoch", 1, 4), ("eval", 1.5, 6), ("epoch", 2, 8),
            ("eval", 2.25, 9), ("epoch", 3, 12),
        ]  # fmt: skip
        evals = [m for m in fine[opt] if m["kind"] == "eval"]
        assert all(set(train.EVAL_FIELDS) | {"test_mse"} == set(m) for m in evals)
        times = [m["train_time_s"] for m in fine[opt]]
        assert times == sorted(times) and len(set(times)) == len(times)
        # The evaluations change nothing in training: the epoch lines are those of a plain run.
        skip = {*train.MEASURED_FIELDS, "config_hash"}
        epochs = [{k: v for k, v in m.items() if k not in skip} for m in fine[opt]
                  if m["kind"] == "epoch"]  # fmt: skip
        assert epochs == [{k: v for k, v in m.items() if k not in skip} for m in plain[opt]]
        assert evals[0]["test_mse"] != epochs[0]["test_mse"]  # the model of another step


@pytest.mark.parametrize(
    ("tc", "steps", "lrs"),
    [
        # 2 epochs of 4 steps x 1.25 = 10 steps: the last epoch cut to 2; cosine over all 10.
        ({"schedule": "cosine", "budget": 1.25}, [4, 8, 10], None),
        # x 2: the milestone at epoch 1 moves to epoch 2.
        ({"milestones": [1], "gamma": 0.1, "budget": 2}, [4, 8, 12, 16], [0.3, 0.3, 0.03, 0.03]),
        # x 0.5: one epoch, the milestone at epoch 1 stays there (it cannot come sooner).
        ({"milestones": [1], "gamma": 0.1, "budget": 0.5}, [4], [0.3]),
    ],
    ids=["cosine-x1.25", "multistep-x2", "multistep-x0.5"],
)
def test_a_budget_trains_that_many_steps_with_the_schedule_stretched_to_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tc: dict[str, Any], steps: list[int],
    lrs: list[float] | None,
) -> None:  # fmt: skip
    monkeypatch.setitem(tasks.TASKS, "toy-regression", Regression())
    monkeypatch.setitem(train.TASKS, "toy-regression", tasks.TASKS["toy-regression"])
    profile = {"train": {"epochs": 2, "batch_size": 16, **tc},
               "optimizers": {"adam": {"lr": 0.3}}}  # fmt: skip
    cfg = train.resolve("toy-regression", profile, "quick", ["adam"], 1)
    train.run(cfg, tmp_path, progress=False)
    metrics = [json.loads(x) for x in (tmp_path / "adam-seed0" / "metrics.jsonl").open()]
    assert [m["step"] for m in metrics] == steps
    assert all(m["epochs"] == len(steps) for m in metrics)
    if lrs is not None:
        assert [m["lr"] for m in metrics] == pytest.approx(lrs)
    else:  # the cosine ends at 0 on the budget's last step, not on the profile's
        assert metrics[1]["lr"] > 0.01 and metrics[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    # The report counts the run as finished, whatever its number of epochs.
    df, incomplete, _ = results.read_runs(tmp_path, cfg)
    assert not incomplete and len(df) == len(steps)


@pytest.mark.parametrize("schedule", config.HORIZONLESS)
def test_a_budget_of_a_schedule_without_horizon_passes_through_the_shorter_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, schedule: str
) -> None:
    """What the step speedup reads for such schedules (overview.step_speedup): a run of budget 2
    takes the budget-1 run's steps, lrs and evaluations first, so each evaluation of it is the
    final metric of a shorter budget. (A cosine's budget changes every lr: see the test above.)"""
    monkeypatch.setitem(tasks.TASKS, "toy-regression", Regression())
    monkeypatch.setitem(train.TASKS, "toy-regression", tasks.TASKS["toy-regression"])
    skip = {*train.MEASURED_FIELDS, "config_hash", "epochs"}

    def lines(budget: float, out: Path) -> list[dict[str, Any]]:
        tc = {"epochs": 2, "batch_size": 16, "schedule": schedule, "warmup_steps": 3,
              "eval_every": 3, "budget": budget}  # fmt: skip
        profile = {"train": tc, "optimizers": {"adam": {"lr": 0.3}}}
        cfg = train.resolve("toy-regression", profile, "quick", ["adam"], 1)
        train.run(cfg, out, progress=False)
        return [{k: v for k, v in json.loads(x).items() if k not in skip}
                for x in (out / "adam-seed0" / "metrics.jsonl").open()]  # fmt: skip

    short, long = lines(1, tmp_path / "x1"), lines(2, tmp_path / "x2")
    assert [m["step"] for m in long] == [3, 4, 6, 8, 9, 12, 15, 16]
    assert long[: len(short)] == short  # bitwise: the same run so far
    assert long[-1]["test_mse"] != short[-1]["test_mse"]
