"""--resume: a run killed (SIGKILL) or interrupted (Ctrl-C) and resumed ends with an uninterrupted
run's metrics; a checkpoint that is damaged, or would run code when loaded, is refused."""

from __future__ import annotations

import json
import pickle
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from adahessian_bench import cli
from adahessian_bench.train import MEASURED_FIELDS

# Two runs (AdaHessian first: its probe generator must be restored too), three epochs each, with
# evaluations within the epochs.
ARGS = ["run", "fmnist-resnet20", "--optimizers", "adahessian,sgd", "--seeds", "1",
        "--epochs", "3", "--max-steps", "4", "--batch-size", "32", "--train-subset", "500",
        "--test-subset", "200", "--eval-every", "3", "--no-progress"]  # fmt: skip
RUNS = ["adahessian-seed0", "sgd-seed0"]


def behaviour(out: Path, run: str) -> list[dict]:
    """The metrics of a run without the fields that depend on the machine's speed and load."""
    lines = (out / run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k not in MEASURED_FIELDS} for x in lines]


@pytest.fixture(scope="module")
def uninterrupted(data_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    fresh = tmp_path_factory.mktemp("fresh")
    assert cli.main([*ARGS, "--out", str(fresh)]) == 0
    return fresh


def interrupt(out: Path, env: dict[str, str], sig: signal.Signals) -> subprocess.Popen[bytes]:
    """Run ARGS into ``out`` in a subprocess; send it ``sig`` once the first epoch's checkpoint
    exists (the run mid-way); return the ended process."""
    cmd = [sys.executable, "-m", "adahessian_bench", *ARGS, "--out", str(out)]

    # A child of a shell's background job inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: give it the default disposition, as a terminal's process has.
    def default_sigint() -> None:
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=default_sigint)  # fmt: skip
    first_checkpoint = out / RUNS[0] / "checkpoint.pt"
    deadline = time.monotonic() + 180
    while not first_checkpoint.exists():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "no checkpoint after 180 s"
        time.sleep(0.05)
    proc.send_signal(sig)
    proc.wait()
    # Mid-way: some run unfinished (on a busy machine the first run may end before the signal
    # lands; the second then is the one interrupted).
    finished = []
    for run in RUNS:
        path = out / run / "checkpoint.pt"
        finished.append(path.exists() and torch.load(path, weights_only=True)["finished"])
    assert not all(finished), "the command was not interrupted mid-way"
    return proc


def assert_resumed_equals(resumed: Path, fresh: Path) -> None:
    for run in RUNS:
        resumed_metrics = behaviour(resumed, run)
        # Evaluated after steps 3, 6 and 9 within the epochs (of 4 steps each), and after each.
        assert [m["epoch"] for m in resumed_metrics] == [0.75, 1, 1.5, 2, 2.25, 3]
        assert resumed_metrics == behaviour(fresh, run)  # exactly, floats included
        a = torch.load(resumed / run / "checkpoint.pt", weights_only=True)
        b = torch.load(fresh / run / "checkpoint.pt", weights_only=True)
        assert a["finished"] and b["finished"]
        for name, tensor in b["model"].items():
            assert torch.equal(a["model"][name], tensor), name


def test_resume_after_sigkill_matches_an_uninterrupted_run(
    subprocess_env: dict[str, str], tmp_path: Path, uninterrupted: Path
) -> None:
    proc = interrupt(tmp_path, subprocess_env, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert cli.main([*ARGS, "--out", str(tmp_path), "--resume"]) == 0  # in this process
    assert_resumed_equals(tmp_path, uninterrupted)


@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")],
    ids=["ctrl-c", "sigterm"],
)
def test_an_interrupt_says_how_to_resume_and_the_resumed_run_matches(
    subprocess_env: dict[str, str],
    tmp_path: Path,
    uninterrupted: Path,
    sig: signal.Signals,
    code: int,
    word: str,
) -> None:
    """Ctrl-C, and SIGTERM (a scheduler, ``kill``) handled as Ctrl-C is."""
    proc = interrupt(tmp_path, subprocess_env, sig)
    assert proc.stderr is not None
    err = proc.stderr.read().decode()
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"{word}: the runs under {tmp_path} can be continued with the same command plus --resume"
    )
    assert cli.main([*ARGS, "--out", str(tmp_path), "--resume"]) == 0
    assert_resumed_equals(tmp_path, uninterrupted)


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


class RunsCode:
    """Unpickling this calls ``Path.touch(marker)``: a stand-in for arbitrary code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


SGD = [*ARGS[:3], "sgd", *ARGS[4:6], "--epochs", "1", *ARGS[8:]]


@pytest.fixture
def sgd_run(data_cache: Path, tmp_path: Path) -> Path:
    """A run folder with a checkpoint (that --resume loads, finished or not)."""
    out = tmp_path / "out"
    assert cli.main([*SGD, "--out", str(out)]) == 0
    return out


def test_a_checkpoint_that_would_run_code_is_refused_unloaded(
    sgd_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    folder_state: Callable[[Path], dict[str, bytes]],
) -> None:
    planted = sgd_run / "sgd-seed0" / "checkpoint.pt"
    marker = tmp_path / "code-ran"
    torch.save({"model": RunsCode(marker)}, planted)
    # The planted file does run code when unpickled without weights_only (the danger is real).
    probe = tmp_path / "probe.pt"
    torch.save({"model": RunsCode(tmp_path / "probe-ran")}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "probe-ran").exists()

    before = folder_state(sgd_run)
    capsys.readouterr()
    assert cli.main([*SGD, "--out", str(sgd_run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert not marker.exists()
    assert err.count("\n") == 1 and err.startswith(
        f"adahessian-bench run: error: {planted} holds objects other than"
    )
    assert "without --resume" in err
    assert folder_state(sgd_run) == before


@pytest.mark.parametrize("damage", ["truncated", "empty", "not a zip"])
def test_a_damaged_checkpoint_is_named_with_what_to_do(
    sgd_run: Path,
    damage: str,
    capsys: pytest.CaptureFixture[str],
    folder_state: Callable[[Path], dict[str, bytes]],
) -> None:
    path = sgd_run / "sgd-seed0" / "checkpoint.pt"
    payload = path.read_bytes()
    path.write_bytes({"truncated": payload[: len(payload) // 2], "empty": b"",
                      "not a zip": pickle.dumps({"epoch": 1}, protocol=2)}[damage])  # fmt: skip
    before = folder_state(sgd_run)
    capsys.readouterr()
    assert cli.main([*SGD, "--out", str(sgd_run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"adahessian-bench run: error: {path} ")
    assert "delete it" in err and "without --resume" in err
    assert folder_state(sgd_run) == before
    # As the message says: without the checkpoint, --resume trains that run from the start.
    path.unlink()
    assert cli.main([*SGD, "--out", str(sgd_run), "--resume"]) == 0
    assert [m["epoch"] for m in behaviour(sgd_run, "sgd-seed0")] == [0.75, 1]
