"""A fuzzer over the files the harness reads back (hypothesis): a run folder's metrics lines,
step_cost.json, config.json and env.json, mutated line by line and field by field (values of every
JSON kind, NaN and inf, keys dropped, lines duplicated, swapped, cut short). The invariant, through
the command line as a user meets it: ``report`` and ``summary`` either work or end in one line of
error (exit status 1), never a traceback; and no file they read is changed. A bounded run is part
of ``make test``; ``-m slow`` runs a longer one."""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import tempfile
from pathlib import Path
from typing import Any

import matplotlib
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adahessian_bench import cli

FAST = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=True,
)
SLOW = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CFG: dict[str, Any] = {
    "task": "fmnist-resnet20",
    "profile": "quick",
    "seeds": [0, 1],
    "optimizers": {"adam": {"lr": 0.001}, "adahessian": {"lr": 0.15}},
    "train": {"epochs": 3, "batch_size": 64, "milestones": [2], "gamma": 0.1, "target": 0.6},
    "device": "cpu",
}
COST = {"optimizers": {o: {"hessian_step_s": 0.2, "plain_step_s": 0.1} for o in CFG["optimizers"]}}
ENV = {"torch": "2.13.0", "device": "cpu", "cpu": "a CPU", "threads": 1, "command": "x"}
READ = ("config.json", "step_cost.json", "env.json")  # and every metrics.jsonl


def metrics(opt: str, seed: int) -> list[dict[str, Any]]:
    acc = {"adam": [0.5, 0.6, 0.7], "adahessian": [0.55, 0.65, 0.72]}[opt]
    return [
        {"optimizer": opt, "seed": seed, "epoch": e + 1, "step": 10 * (e + 1), "lr": 0.1,
         "train_loss": 1.0 - a, "train_acc": a, "test_loss": 1.0 - a, "test_acc": a + 0.01 * seed,
         "val_acc": a, "train_time_s": 10.0 * (e + 1), "wall_time_s": 12.0 * (e + 1),
         "mean_step_time_s": 0.1, "peak_memory_mb": 100.0}
        for e, a in enumerate(acc)
    ]  # fmt: skip


def folder(root: Path) -> Path:
    """A finished run folder as the harness writes it: two optimizers x two seeds."""
    out = root / "out"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(CFG, indent=2))
    (out / "step_cost.json").write_text(json.dumps(COST))
    (out / "env.json").write_text(json.dumps(ENV))
    for seed in CFG["seeds"]:
        for opt in CFG["optimizers"]:
            (out / f"{opt}-seed{seed}").mkdir()
            text = "".join(json.dumps(m) + "\n" for m in metrics(opt, seed))
            (out / f"{opt}-seed{seed}" / "metrics.jsonl").write_text(text)
    return out


# ----------------------------------------------------------------------------- values and edits

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 3, 0.0, -0.0, 1e308, 1e-308, "nan", "", "adam", "0.7"]),
    st.text(max_size=6),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)


def dumps(value: Any) -> str:
    """JSON as Python writes it: NaN and Infinity included (a file may hold them)."""
    return json.dumps(value)


@st.composite
def edit_dict(draw: st.DrawFn, d: dict[str, Any], depth: int = 2) -> dict[str, Any]:
    """``d`` with one key set to a drawn value, dropped, added, or (a nested dict) edited."""
    d = copy.deepcopy(d)
    keys = sorted(d)
    how = draw(st.sampled_from(["set", "drop", "add", "nest"] if depth else ["set", "drop", "add"]))
    if how == "add" or not keys:
        d[draw(st.text(max_size=6))] = draw(json_values)
        return d
    key = draw(st.sampled_from(keys))
    if how == "drop":
        del d[key]
    elif how == "nest" and isinstance(d[key], dict):
        d[key] = draw(edit_dict(d[key], depth - 1))
    else:
        d[key] = draw(json_values)
    return d


@st.composite
def metrics_text(draw: st.DrawFn, lines: list[dict[str, Any]]) -> str:
    """A metrics.jsonl with a few edits: a field changed, a line replaced by junk, duplicated,
    dropped or swapped, the file cut at a byte."""
    raw = [dumps(m) for m in lines]
    for _ in range(draw(st.integers(1, 3))):
        i = draw(st.integers(0, len(raw) - 1)) if raw else 0
        how = draw(st.sampled_from(["field", "field", "junk", "dup", "drop", "swap", "value"]))
        if not raw:
            raw = [draw(st.text(max_size=20))]
        elif how == "field":
            try:
                line = json.loads(raw[i])
            except ValueError:  # a line already replaced by junk
                line = None
            if isinstance(line, dict):
                raw[i] = dumps(draw(edit_dict(line, depth=0)))
        elif how == "junk":
            raw[i] = draw(st.text(max_size=30))
        elif how == "value":
            raw[i] = dumps(draw(json_values))
        elif how == "dup":
            raw.insert(i, raw[i])
        elif how == "drop":
            del raw[i]
        elif len(raw) > 1:
            raw[i], raw[-1] = raw[-1], raw[i]
    text = "\n".join(raw) + "\n"
    if draw(st.booleans()) and draw(st.booleans()):  # a quarter of the files cut short
        text = text[: draw(st.integers(0, len(text)))]
    return text


@st.composite
def damage(draw: st.DrawFn) -> dict[str, str]:
    """What to write over which file of the folder (one to three files)."""
    files: dict[str, str] = {}
    for _ in range(draw(st.integers(1, 3))):
        which = draw(st.sampled_from([*READ, "metrics", "metrics", "whole"]))
        if which == "metrics":
            opt = draw(st.sampled_from(list(CFG["optimizers"])))
            seed = draw(st.sampled_from([0, 1]))
            files[f"{opt}-seed{seed}/metrics.jsonl"] = draw(metrics_text(metrics(opt, seed)))
        elif which == "whole":  # a file replaced by any JSON at all, or by text
            name = draw(st.sampled_from(READ))
            files[name] = draw(st.one_of(json_values.map(dumps), st.text(max_size=20)))
        else:
            base = {"config.json": CFG, "step_cost.json": COST, "env.json": ENV}[which]
            files[which] = dumps(draw(edit_dict(base)))
    return files


# ----------------------------------------------------------------------------- the invariant


def read_files(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in out.rglob("*")
        if p.is_file() and (p.name in READ or p.name == "metrics.jsonl")
    }


def works_or_one_line(argv: list[str]) -> tuple[int, str]:
    """Run the command line; its exit status and what it printed on stderr, checked: 0, or 1
    with one line of error and no traceback."""
    err, printed = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(printed):
        code = cli.main(argv)
    text = err.getvalue()
    assert "Traceback" not in text, text
    if code != 0:
        lines = text.strip().splitlines()
        assert code == 1 and len(lines) == 1, (code, text)
        assert lines[0].startswith(f"adahessian-bench {argv[0]}: error: "), text
    return code, text


def check_damage(files: dict[str, str]) -> None:
    with tempfile.TemporaryDirectory() as root:
        out = folder(Path(root))
        for name, text in files.items():
            (out / name).write_text(text)
        before = read_files(out)
        works_or_one_line(["report", str(out)])
        works_or_one_line(["summary", str(out)])
        assert read_files(out) == before
        matplotlib.pyplot.close("all")


def test_the_undamaged_folder_reports(tmp_path: Path) -> None:
    """The fuzzer's starting point is a folder that works: the edits are what it tests."""
    out = folder(tmp_path)
    assert works_or_one_line(["report", str(out)])[0] == 0
    assert works_or_one_line(["summary", str(out)])[0] == 0
    assert (out / "report.md").is_file()


@FAST
@given(damage())
def test_report_and_summary_on_a_damaged_folder_work_or_say_why_in_one_line(
    files: dict[str, str],
) -> None:
    check_damage(files)


@pytest.mark.slow
@SLOW
@given(damage())
def test_report_and_summary_on_a_damaged_folder_longer(files: dict[str, str]) -> None:
    check_damage(files)


# What the fuzzer found (each a traceback before it was fixed), kept as plain cases: the file
# written over, and what the one line of error (or the report's note) says.
METRIC = {"key": "test_acc", "label": "acc", "higher_is_better": True, "scale": 1, "fmt": ".2f"}
FOUND = {
    "config-null": ({"config.json": "null"}, "config.json is damaged (it holds NoneType"),
    "config-without-train": (
        {"config.json": dumps({k: v for k, v in CFG.items() if k != "train"})},
        "config.json is damaged (it has no train)",
    ),
    "config-train-null": ({"config.json": dumps({**CFG, "train": None})}, "train is None"),
    "config-task-a-list": ({"config.json": dumps({**CFG, "task": []})}, "task is []"),
    "config-optimizers-a-list": (
        {"config.json": dumps({**CFG, "optimizers": []})},
        "optimizers is not a table of optimizers",
    ),
    "config-epochs-a-string": (
        {"config.json": dumps({**CFG, "train": {**CFG["train"], "epochs": "3"}})},
        "train.epochs is '3', not an integer >= 1",
    ),
    "config-multistep-without-gamma": (
        {
            "config.json": dumps(
                {**CFG, "train": {k: v for k, v in CFG["train"].items() if k != "gamma"}}
            )
        },
        "train has no gamma (its multistep schedule needs it)",
    ),
    "config-metric-format": (
        {"config.json": dumps({**CFG, "metric": {**METRIC, "fmt": "q"}})},
        "metric.fmt is 'q', not a number format",
    ),
    "metrics-line-of-another-run": (
        {"adam-seed0/metrics.jsonl": "".join(dumps(m) + "\n" for m in metrics("adam", 1))},
        "adam-seed0 (its metrics.jsonl is damaged: line 1 is of optimizer 'adam' and seed 1, "
        "not of its folder's run adam-seed0)",
    ),
    "metrics-optimizer-null": (
        {"adam-seed0/metrics.jsonl": dumps({**metrics("adam", 0)[0], "optimizer": None})},
        "line 1: optimizer is None, not a name",
    ),
    "metrics-memory-a-list": (
        {"adam-seed0/metrics.jsonl": dumps({**metrics("adam", 0)[0], "peak_memory_mb": []})},
        "line 1: peak_memory_mb is [], not a number",
    ),
    "metrics-epoch-nan": (
        {"adam-seed0/metrics.jsonl": dumps({**metrics("adam", 0)[0], "epoch": math.nan})},
        "line 1: epoch is nan, not a count",
    ),
}


@pytest.mark.parametrize(("files", "says"), FOUND.values(), ids=FOUND.keys())
def test_what_the_fuzzer_found_is_named(files: dict[str, str], says: str, tmp_path: Path) -> None:
    out = folder(tmp_path)
    for name, text in files.items():
        (out / name).write_text(text)
    code, err = works_or_one_line(["report", str(out)])
    report = (out / "report.md").read_text() if code == 0 else ""
    assert says in err + report
