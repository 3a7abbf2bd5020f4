"""The side-by-side step cost: which steps are Hessian steps, the time axis built from it, the
measurement before training (and that it changes no run), and the report that reads it."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import pytest
import torch

from adahessian import AdaHessian
from adahessian_bench import cli, optimizers, report, stepcost, steptime
from adahessian_bench.train import MEASURED_FIELDS


@pytest.mark.parametrize("interval,warmup", [(1, 0), (10, 0), (10, 5), (3, 7), (4, 100)])
def test_hessian_steps_counts_what_the_optimizer_does(interval: int, warmup: int) -> None:
    p = torch.nn.Parameter(torch.ones(3))
    opt = AdaHessian([p], update_interval=interval, hessian_warmup=warmup)
    due = []
    for _ in range(60):
        due.append(opt.hessian_due)
        p.grad = None
        (p**2).sum().backward(create_graph=opt.hessian_due)
        opt.step()
    hp = {"update_interval": interval, "hessian_warmup": warmup}
    for s in range(61):
        assert steptime.hessian_steps(s, hp) == sum(due[:s]), s


def test_cost_time_counts_each_step_kind_at_its_cost() -> None:
    cost = {"hessian_step_s": 0.3, "plain_step_s": 0.1}
    hp = {"update_interval": 10, "hessian_warmup": 5}
    # Steps 0-4 (warm-up), 5 and 15: 7 Hessian steps, 13 plain.
    assert steptime.cost_time("adahessian-lazy", 20, hp, cost) == pytest.approx(7 * 0.3 + 13 * 0.1)
    assert steptime.cost_time("adahessian", 20, {}, cost) == pytest.approx(20 * 0.3)
    same = {"hessian_step_s": 0.1, "plain_step_s": 0.1}
    assert steptime.cost_time("adam", 20, hp, same) == pytest.approx(2.0)


def test_contenders_time_plain_steps_only_where_a_run_takes_them() -> None:
    lazy = {"update_interval": 5, "hessian_warmup": 20}
    cfg = {"optimizers": {"adam": {"lr": 1e-3}, "adahessian": {"lr": 0.1}, "adahessian-lazy": lazy}}
    got = [(name, kind) for name, kind, _ in stepcost.contenders(cfg)]
    assert got == [("adam", "step"), ("adahessian", "hessian"), ("adahessian-lazy", "hessian"),
                   ("adahessian-lazy", "plain")]  # fmt: skip
    hp = {kind: hp for name, kind, hp in stepcost.contenders(cfg) if name == "adahessian-lazy"}
    assert hp["hessian"]["update_interval"] == 1 and hp["hessian"]["hessian_warmup"] == 0
    assert hp["plain"]["update_interval"] == 5 and hp["plain"]["hessian_warmup"] == 0


ARGS = ["run", "fmnist-resnet20", "--seeds", "1", "--epochs", "2", "--max-steps", "25",
        "--batch-size", "16", "--train-subset", "500", "--test-subset", "100",
        "--no-progress"]  # fmt: skip


def behaviour(out: Path, run: str) -> list[dict]:
    lines = (out / run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in MEASURED_FIELDS} for x in lines]


def test_the_measurement_is_written_and_changes_no_run(data_cache: Path, tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    text = (
        'task = "fmnist-resnet20"\n[train]\nepochs = 2\nbatch_size = 16\nmilestones = [1]\n'
        "gamma = 0.5\ntrain_subset = 500\ntest_subset = 100\neval_batch_size = 50\n"
        "[optimizers.adam]\nlr = 1e-3\n[optimizers.adahessian]\nlr = 0.1\n"
        "[optimizers.adahessian-lazy]\nlr = 0.1\nupdate_interval = 3\nhessian_warmup = 2\n"
    )
    profile.write_text(text)
    opts = ["--optimizers", "adam,adahessian-lazy", "--config", str(profile)]
    assert cli.main([*ARGS, *opts, "--out", str(tmp_path / "a")]) == 0
    cost = json.loads((tmp_path / "a" / steptime.COST_FILE).read_text())
    # 2 epochs x 25 steps: 50 // 25 = 2 rounds timed, after 2 untimed.
    assert cost["rounds"] == 2 and cost["warmup_rounds"] == 2
    assert set(cost["optimizers"]) == {"adam", "adahessian-lazy"}
    assert len(cost["samples_s"]["adam:step"]) == 2
    assert len(cost["samples_s"]["adahessian-lazy:hessian"]) == 2
    assert len(cost["samples_s"]["adahessian-lazy:plain"]) == 2  # the first (Hessian) untimed
    for c in cost["optimizers"].values():
        assert c["hessian_step_s"] > 0 and c["plain_step_s"] > 0
        assert c["wall_hessian_step_s"] > 0 and c["wall_plain_step_s"] > 0
    adam = cost["optimizers"]["adam"]
    assert adam["hessian_step_s"] == adam["plain_step_s"]
    # The cost is read from the CPU time of each step; the wall clock is kept beside it.
    assert cost["clock"] == "cpu"
    assert {k: len(v) for k, v in cost["wall_samples_s"].items()} == {
        k: len(v) for k, v in cost["samples_s"].items()
    }
    lazy, samples = cost["optimizers"]["adahessian-lazy"], "adahessian-lazy:hessian"
    assert lazy["hessian_step_s"] == statistics.median(cost["samples_s"][samples])
    assert lazy["wall_hessian_step_s"] == statistics.median(cost["wall_samples_s"][samples])

    # The same runs without the measurement: the same metrics, bit for bit.
    profile.write_text(text.replace("[train]\n", "[train]\ncost_rounds = 0\n"))
    assert cli.main([*ARGS, *opts, "--out", str(tmp_path / "b")]) == 0
    assert not (tmp_path / "b" / steptime.COST_FILE).exists()
    for run in ("adam-seed0", "adahessian-lazy-seed0"):
        a, b = behaviour(tmp_path / "a", run), behaviour(tmp_path / "b", run)
        assert a == [{**m, "config_hash": a[0]["config_hash"]} for m in b]

    # --resume keeps the measurement it has (the same configuration).
    before = (tmp_path / "a" / steptime.COST_FILE).read_bytes()
    profile.write_text(text)
    assert cli.main([*ARGS, *opts, "--out", str(tmp_path / "a"), "--resume"]) == 0
    assert (tmp_path / "a" / steptime.COST_FILE).read_bytes() == before

    # The report's time axis is steps x the measured cost.
    text_a = report.make_report(tmp_path / "a")
    assert "measured before training with every optimizer side by side" in text_a
    steps = json.loads((tmp_path / "a" / "adahessian-lazy-seed0" / "metrics.jsonl")
                       .read_text().splitlines()[-1])["step"]  # fmt: skip
    assert steps == 50
    lazy = cost["optimizers"]["adahessian-lazy"]
    # 2 warm-up Hessian steps, then steps 2, 5, ..., 47: 2 + 16 Hessian steps, 32 plain.
    expected = 18 * lazy["hessian_step_s"] + 32 * lazy["plain_step_s"]
    table = [line for line in text_a.splitlines() if line.startswith("| ")]
    header = [c.strip() for c in table[0].split("|")[1:-1]]
    row = next(line for line in table if line.startswith("| adahessian-lazy "))
    cells = dict(zip(header, [c.strip() for c in row.split("|")[1:-1]], strict=True))
    assert cells["training time (s)"] == f"{expected:.0f}"
    assert cells["ms / step"] == f"{1000 * expected / 50:.0f}"


def test_a_variant_builds_its_kind_and_bad_names_are_refused() -> None:
    assert optimizers.kind("adahessian-lazy") == "adahessian"
    assert optimizers.kind("adamw-lr2") == "adamw" and optimizers.kind("sgd") == "sgd"
    assert not optimizers.first_order("adahessian-int10") and optimizers.first_order("adam-x")
    p = torch.nn.Parameter(torch.zeros(2))
    opt = optimizers.build("adahessian-lazy", [p], {"update_interval": 4}, seed=0)
    assert isinstance(opt, AdaHessian) and opt.update_interval == 4
    for bad in ("adamx", "adahessian-", "Adam", "lion-fast", "adam--x", ""):
        with pytest.raises(ValueError, match="unknown optimizer"):
            optimizers.kind(bad)


def test_the_cpu_clock_does_not_count_time_spent_waiting() -> None:
    """A step that waits (for a core, here for a timer) adds nothing to its cost on the CPU clock;
    on GPU the wall clock of the synchronised step is the cost."""
    name, now = stepcost.clock(torch.device("cpu"))
    t0, c0 = time.perf_counter(), now()
    time.sleep(0.3)
    assert name == "cpu" and time.perf_counter() - t0 >= 0.3 and now() - c0 < 0.1
    name, now = stepcost.clock(torch.device("meta"))  # any device but the CPU
    assert name == "wall" and now is time.perf_counter
