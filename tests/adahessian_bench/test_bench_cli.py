"""The command line end to end, on a few steps of the real data: metrics, config, report, plots."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import matplotlib.image
import pytest

from adahessian_bench import cli
from adahessian_bench.optimizers import OPTIMIZERS
from adahessian_bench.report import PLOTS
from adahessian_bench.train import METRIC_FIELDS

# A few steps on a small class-balanced subset: behaviour, not accuracy.
SMOKE = ["--epochs", "2", "--max-steps", "3", "--batch-size", "32", "--train-subset", "500",
         "--test-subset", "200", "--no-progress"]  # fmt: skip


@pytest.fixture(scope="module")
def smoke_run(data_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("smoke")
    argv = ["run", "fmnist-resnet20", "--optimizers", ",".join(OPTIMIZERS), "--seeds", "1"]
    assert cli.main([*argv, *SMOKE, "--out", str(out)]) == 0
    return out


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_list_names_tasks_profiles_and_optimizers(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["list"]) == 0
    out = capsys.readouterr().out
    for name in ["fmnist-resnet20", "fmnist-resnet32", "cifar10-resnet20", "cifar10-resnet32"]:
        assert name in out
    assert "quick" in out and "paper" in out
    for opt in OPTIMIZERS:
        assert opt in out


@pytest.mark.parametrize(
    "command", [[], ["list"], ["data", "fetch"], ["run"], ["sweep"], ["report"], ["summary"]]
)
def test_help_prints_its_text_as_written(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse %-formats help strings but prints descriptions as they are: a "%%" escaped for the
    # former shows doubled in the latter (the summary's "95 %% interval").
    assert cli.main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: adahessian-bench") and "%%" not in out and "%(" not in out


def test_run_writes_per_epoch_metrics_for_every_optimizer(smoke_run: Path) -> None:
    cfg = json.loads((smoke_run / "config.json").read_text())
    for opt in OPTIMIZERS:
        metrics = read_metrics(smoke_run / f"{opt}-seed0" / "metrics.jsonl")
        assert [m["epoch"] for m in metrics] == [1, 2]
        assert [m["step"] for m in metrics] == [3, 6]  # --max-steps caps each epoch
        for m in metrics:
            assert set(METRIC_FIELDS) <= set(m)
            assert m["optimizer"] == opt and m["seed"] == 0
            assert 0 <= m["test_acc"] <= 1 and 0 <= m["train_acc"] <= 1
            assert math.isfinite(m["train_loss"]) and math.isfinite(m["test_loss"])
            assert m["mean_step_time_s"] > 0 and m["peak_memory_mb"] > 0
        assert metrics[1]["train_time_s"] > metrics[0]["train_time_s"]
        # The profile's milestones (4, 6 of 8 epochs) scale to 2 epochs: decay after epoch 1.
        lr = cfg["optimizers"][opt]["lr"]
        assert metrics[0]["lr"] == pytest.approx(lr)
        assert metrics[1]["lr"] == pytest.approx(lr * 0.1)


def test_run_writes_the_resolved_config_and_environment(smoke_run: Path) -> None:
    cfg = json.loads((smoke_run / "config.json").read_text())
    assert cfg["task"] == "fmnist-resnet20" and cfg["profile"] == "quick"
    assert cfg["seeds"] == [0]
    assert list(cfg["optimizers"]) == list(OPTIMIZERS)
    assert cfg["train"]["epochs"] == 2 and cfg["train"]["max_steps"] == 3
    assert cfg["train"]["batch_size"] == 32 and cfg["train"]["train_subset"] == 500
    # The reference's decoupled weight decay coefficients (5e-4 at the reference's initial lr:
    # 0.15 and 0.01), kept when the lr sweep moved the lrs (only the lr was tuned).
    ah = cfg["optimizers"]["adahessian"]
    assert ah["weight_decay"] == pytest.approx(5e-4 / 0.15) and ah["lr"] == 0.075
    aw = cfg["optimizers"]["adamw"]
    assert aw["weight_decay"] == pytest.approx(5e-4 / 0.01) and aw["lr"] == 0.005
    env = json.loads((smoke_run / "env.json").read_text())
    for key in ["torch", "device", "cpu_count", "torch_threads", "platform", "command"]:
        assert key in env
    assert env["device"] == cfg["device"]


def test_report_writes_a_table_and_valid_pngs(
    smoke_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["report", str(smoke_run), "--target", "0.05"]) == 0
    printed = capsys.readouterr().out
    text = (smoke_run / "report.md").read_text()
    assert text in printed
    lines = text.splitlines()
    first = lines.index(next(x for x in lines if x.startswith("| ")))
    rows = [x for x in lines[first : lines.index("", first)] if x.startswith("| ")]
    assert len(rows) == 1 + len(OPTIMIZERS)  # header + one row per optimizer
    assert "step cost vs adam" in rows[0] and "time to 5.00% (s)" in rows[0]
    assert (smoke_run / "step_cost.json").is_file()
    assert "measured before training with every optimizer side by side" in text
    for opt, row in zip(OPTIMIZERS, rows[1:], strict=True):
        assert row.split("|")[1].strip() == opt
    adam_row = rows[1 + OPTIMIZERS.index("adam")]
    assert "1.00x" in adam_row
    for name in PLOTS:
        png = smoke_run / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        image = matplotlib.image.imread(png)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100
        assert image.std() > 0  # not blank


def test_unknown_optimizer_is_an_error(
    data_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["run", "fmnist-resnet20", "--optimizers", "sgd,lbfgs", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "lbfgs" in capsys.readouterr().err


def test_report_of_an_empty_folder_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["report", str(tmp_path)]) == 1
    assert "no */metrics.jsonl" in capsys.readouterr().err


def test_a_custom_config_file(
    data_cache: Path, tmp_path: Path, tiny_profile: Callable[..., Path]
) -> None:
    toml = tiny_profile(lr=0.05)
    out = tmp_path / "out"
    argv = ["run", "fmnist-resnet20", "--config", str(toml), "--optimizers", "sgd"]
    assert cli.main([*argv, "--max-steps", "2", "--no-progress", "--out", str(out)]) == 0
    (m,) = read_metrics(out / "sgd-seed0" / "metrics.jsonl")
    assert m["lr"] == 0.05 and m["step"] == 2
