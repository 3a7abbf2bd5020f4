"""The output folder: one configuration per folder, and one writer at a time (OUT/.lock)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from adahessian_bench import cli, folders
from adahessian_bench.config import config_hash, run_config

TINY = ["--epochs", "1", "--max-steps", "2", "--batch-size", "16", "--train-subset", "100",
        "--test-subset", "100", "--no-progress"]  # fmt: skip
RUN = ["run", "fmnist-resnet20", "--optimizers", "sgd", "--seeds", "1", *TINY]
SWEEP = ["sweep", "fmnist-resnet20", "--param", "lr", "--values", "1,2", "--optimizers", "sgd",
         *TINY]  # fmt: skip

State = Callable[[Path], dict[str, bytes]]


@pytest.fixture
def finished(data_cache: Path, tmp_path: Path) -> Path:
    """A folder holding the finished run of RUN."""
    out = tmp_path / "out"
    assert cli.main([*RUN, "--out", str(out)]) == 0
    return out


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run the CLI, expect a refusal (exit 2, one line on stderr); return that line."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"adahessian-bench {argv[0]}: error: "), err
    return err


# ----------------------------------------------------------------------------- one writer


def hold_in_another_process(out: Path, env: dict[str, str]) -> subprocess.Popen[str]:
    """A process that holds the lock of ``out`` (as a run does) until it is killed."""
    code = ("import sys, time; from pathlib import Path; from adahessian_bench import folders\n"
            "with folders.hold(Path(sys.argv[1])):\n    print('locked', flush=True)\n"
            "    time.sleep(600)\n")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline() == "locked\n"
    return proc


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_a_second_writer_is_refused_at_once_and_the_lock_dies_with_its_holder(
    command: str,
    data_cache: Path,
    tmp_path: Path,
    subprocess_env: dict[str, str],
    folder_state: State,
) -> None:
    out = tmp_path / "out"
    argv = [*(RUN if command == "run" else SWEEP), "--out", str(out)]
    assert cli.main(argv) == 0  # a finished folder, then another process writing it
    holder = hold_in_another_process(out, subprocess_env)
    try:
        before = folder_state(out)
        # A second writer, in its own process: refused without waiting for the lock (a wait
        # would outlast the timeout: the holder sleeps for 10 minutes).
        second = subprocess.run([sys.executable, "-m", "adahessian_bench", *argv, "--resume"],
                                env=subprocess_env, capture_output=True, text=True,
                                timeout=120)  # fmt: skip
        assert second.returncode == 2
        assert second.stderr == (
            f"adahessian-bench {command}: error: {out} is in use by another run or sweep: wait "
            "until it ends, or use "
            "another --out\n"
        )
        assert folder_state(out) == before
    finally:
        holder.kill()
        holder.wait()
    # SIGKILL left the lock file, unlocked: the next writer goes ahead.
    assert (out / ".lock").exists()
    assert cli.main([*argv, "--resume"]) == 0


def test_a_failed_first_call_leaves_no_folder_behind(tmp_path: Path) -> None:
    out = tmp_path / "new" / "out"
    with pytest.raises(RuntimeError), folders.hold(out):
        raise RuntimeError("no data")
    assert not out.exists() and (tmp_path / "new").is_dir()
    with folders.hold(out):  # once written into, the folder stays
        (out / "config.json").write_text("{}")
    assert (out / "config.json").is_file() and (out / ".lock").is_file()


# ----------------------------------------------------------------------------- one configuration


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_of_another_configuration_is_refused(
    finished: Path, resume: bool, capsys: pytest.CaptureFixture[str], folder_state: State
) -> None:
    before = folder_state(finished)
    other = [*RUN, "--batch-size", "32", "--out", str(finished)] + (["--resume"] if resume else [])
    err = refused(other, capsys)
    assert "another configuration" in err and "another --out" in err and "delete" in err
    assert folder_state(finished) == before
    # The same configuration may start over (without --resume) or continue (with it).
    assert cli.main([*RUN, "--out", str(finished)] + (["--resume"] if resume else [])) == 0


def test_runs_left_from_another_configuration_are_refused(
    finished: Path, capsys: pytest.CaptureFixture[str], folder_state: State
) -> None:
    # A run folder that config.json does not name (left by an older version, or copied in).
    shutil.copytree(finished / "sgd-seed0", finished / "adam-seed0")
    before = folder_state(finished)
    err = refused([*RUN, "--out", str(finished)], capsys)
    assert "another configuration (adam-seed0)" in err
    # Runs without a config.json: of no known configuration.
    (finished / "config.json").unlink()
    shutil.rmtree(finished / "adam-seed0")
    err = refused([*RUN, "--out", str(finished)], capsys)
    assert "another configuration (sgd-seed0)" in err
    kept = {k: v for k, v in before.items() if k != "config.json" and not k.startswith("adam-")}
    assert folder_state(finished) == kept


def test_a_run_and_a_sweep_do_not_share_a_folder(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], folder_state: State
) -> None:
    before = folder_state(finished)
    assert "is a run folder" in refused([*SWEEP, "--out", str(finished)], capsys)
    assert folder_state(finished) == before
    (finished / "config.json").unlink()  # its runs alone
    assert "is a run folder" in refused([*SWEEP, "--out", str(finished)], capsys)
    sweep_out = tmp_path / "sweep"
    sweep_out.mkdir()
    (sweep_out / "sweep.json").write_text(json.dumps({"param": "lr", "values": [4]}))
    (sweep_out / ".adahessian-bench").write_text('{"written_by": "adahessian-bench"}')
    assert "is a sweep's folder" in refused([*RUN, "--out", str(sweep_out)], capsys)
    # Another sweep's folder, with or without --resume.
    for resume in ([], ["--resume"]):
        err = refused([*SWEEP, "--out", str(sweep_out), *resume], capsys)
        assert "describes another sweep" in err and "another --out" in err
    assert sorted(p.name for p in sweep_out.iterdir()) == [".adahessian-bench", "sweep.json"]


def test_every_metrics_line_carries_the_hash_of_its_run_in_config_json(finished: Path) -> None:
    cfg = json.loads((finished / "config.json").read_text())
    lines = (finished / "sgd-seed0" / "metrics.jsonl").read_text().splitlines()
    want = config_hash(run_config(cfg, "sgd", 0))
    assert lines and all(json.loads(x)["config_hash"] == want for x in lines)


# ------------------------------------------------------------------------- what the harness owns


def test_the_folders_the_harness_writes_are_marked_and_older_ones_still_count(
    finished: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mark = json.loads((finished / ".adahessian-bench").read_text())
    assert mark == {"written_by": "adahessian-bench", "kind": "run"}
    sweep = tmp_path / "sweep"
    assert cli.main([*SWEEP, "--out", str(sweep)]) == 0
    assert json.loads((sweep / ".adahessian-bench").read_text())["kind"] == "sweep"
    assert json.loads((sweep / "lr=2" / ".adahessian-bench").read_text())["kind"] == "run"
    # A folder of an older version (no mark): its config.json says whose it is, and a resume
    # marks it.
    (finished / ".adahessian-bench").unlink()
    assert cli.main([*RUN, "--out", str(finished), "--resume"]) == 0
    assert (finished / ".adahessian-bench").is_file()
    # A mark alone does not make a folder of another configuration ours to overwrite.
    (finished / "config.json").write_text('{"task": "x"}')
    assert "another configuration" in refused([*RUN, "--out", str(finished)], capsys)


def test_an_empty_folder_may_take_a_run(data_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "made-by-hand"
    out.mkdir()
    assert cli.main([*RUN, "--out", str(out)]) == 0
    assert (out / "sgd-seed0" / "metrics.jsonl").is_file()


def test_a_run_that_starts_over_says_what_it_replaces(
    finished: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    capsys.readouterr()
    assert cli.main([*RUN, "--out", str(finished)]) == 0
    err = capsys.readouterr().err
    assert (
        f"starting over in {finished}: step_cost.json and the results of sgd-seed0 (1 of 1 "
        "epochs) are replaced" in err
    )
    assert "--resume continues them instead" in err
    assert cli.main([*RUN, "--out", str(finished), "--resume"]) == 0  # continuing: nothing said
    assert "starting over" not in capsys.readouterr().err
