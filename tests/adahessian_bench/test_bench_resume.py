"""--resume: a run killed with SIGKILL and resumed ends with an uninterrupted run's metrics."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from adahessian_bench import cli
from adahessian_bench.train import MEASURED_FIELDS

# Two runs (AdaHessian first: its probe generator must be restored too), three epochs each.
ARGS = ["run", "fmnist-resnet20", "--optimizers", "adahessian,sgd", "--seeds", "1",
        "--epochs", "3", "--max-steps", "4", "--batch-size", "32", "--train-subset", "500",
        "--test-subset", "200", "--no-progress"]  # fmt: skip
RUNS = ["adahessian-seed0", "sgd-seed0"]


def behaviour(out: Path, run: str) -> list[dict]:
    """The metrics of a run without the fields that depend on the machine's speed and load."""
    lines = (out / run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in MEASURED_FIELDS} for x in lines]


def test_resume_after_sigkill_matches_an_uninterrupted_run(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    # Interrupted: start in a subprocess, SIGKILL it once the first epoch's checkpoint exists.
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "adahessian_bench", *ARGS, "--out", str(killed)]
    proc = subprocess.Popen(cmd, env=subprocess_env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    first_checkpoint = killed / RUNS[0] / "checkpoint.pt"
    deadline = time.monotonic() + 180
    while not first_checkpoint.exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint after 180 s"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckpt = torch.load(first_checkpoint, weights_only=False)
    assert not ckpt["finished"] and ckpt["epoch"] < 3, "the run was not interrupted mid-way"

    # Resumed in this process; then an uninterrupted run of the same command.
    assert cli.main([*ARGS, "--out", str(killed), "--resume"]) == 0
    fresh = tmp_path / "fresh"
    assert cli.main([*ARGS, "--out", str(fresh)]) == 0

    for run in RUNS:
        resumed_metrics = behaviour(killed, run)
        assert [m["epoch"] for m in resumed_metrics] == [1, 2, 3]
        assert resumed_metrics == behaviour(fresh, run)  # exactly, floats included
        a = torch.load(killed / run / "checkpoint.pt", weights_only=False)
        b = torch.load(fresh / run / "checkpoint.pt", weights_only=False)
        assert a["finished"] and b["finished"]
        for name, tensor in b["model"].items():
            assert torch.equal(a["model"][name], tensor), name


def test_resume_of_a_finished_run_changes_nothing(data_cache: Path, tmp_path: Path) -> None:
    args = [*ARGS[:3], "sgd", *ARGS[4:6], "--epochs", "1", *ARGS[8:], "--out", str(tmp_path)]
    assert cli.main(args) == 0
    before = (tmp_path / "sgd-seed0" / "metrics.jsonl").read_text()
    assert cli.main([*args, "--resume"]) == 0
    assert (tmp_path / "sgd-seed0" / "metrics.jsonl").read_text() == before


def test_resume_with_other_options_is_refused(data_cache: Path, tmp_path: Path) -> None:
    args = [*ARGS[:3], "sgd", *ARGS[4:6], "--epochs", "1", *ARGS[8:], "--out", str(tmp_path)]
    assert cli.main(args) == 0
    assert cli.main([*args, "--resume", "--batch-size", "16"]) == 2
