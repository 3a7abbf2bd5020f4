"""``adahessian-bench run`` launched with torchrun: two gloo ranks train data-parallel."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch


@pytest.mark.skipif(not torch.distributed.is_available(), reason="needs torch.distributed")
def test_torchrun_trains_data_parallel_and_rank_zero_writes(
    subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "ddp"
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
        "-m", "adahessian_bench", "run", "fmnist-resnet20", "--optimizers", "adam,adahessian",
        "--seeds", "1", "--epochs", "1", "--max-steps", "2", "--batch-size", "16",
        "--train-subset", "200", "--test-subset", "100", "--no-progress", "--threads", "1",
        "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["world_size"] == 2
    for opt in ("adam", "adahessian"):
        lines = (out / f"{opt}-seed0" / "metrics.jsonl").read_text().splitlines()
        metrics = [json.loads(x) for x in lines]
        assert [m["step"] for m in metrics] == [2]
        ckpt = torch.load(out / f"{opt}-seed0" / "checkpoint.pt", weights_only=False)
        if opt == "adahessian":
            assert ckpt["optimizer"]["adahessian"]["hessian_updates"] == 2
    assert done.stdout.count("final test_acc") == 2, "rank 0 alone reports"
