"""The report on synthetic metrics: mean ± std over seeds, relative step time, time to target."""

from __future__ import annotations

import errno
import json
import math
import os
from collections.abc import Callable
from pathlib import Path

import matplotlib.figure
import matplotlib.image
import pytest

from adahessian_bench import cli, compare, overview, report, results
from adahessian_bench.config import config_hash, run_config
from adahessian_bench.folders import metrics_text
from adahessian_bench.report import PLOTS, make_report, plot_names


def write_run(out: Path, opt: str, seed: int, accs: list[float], step_time: float) -> None:
    run = out / f"{opt}-seed{seed}"
    run.mkdir(parents=True)
    lines = []
    for i, acc in enumerate(accs):
        lines.append(
            {
                "optimizer": opt,
                "seed": seed,
                "epoch": i + 1,
                "step": 10 * (i + 1),
                "lr": 0.1,
                "train_loss": 1.0,
                "train_acc": acc,
                "test_loss": 1.0,
                "test_acc": acc,
                "epoch_time_s": 12.0,
                "train_time_s": 10.0 * (i + 1),
                "wall_time_s": 12.0 * (i + 1),
                "mean_step_time_s": step_time,
                "peak_memory_mb": 100.0 + seed,
            }
        )
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))


def rows_of(text: str, table: int = 0) -> dict[str, list[str]]:
    """The rows of the report's ``table``-th Markdown table, by their first cell."""
    tables: list[list[str]] = []
    previous = ""
    for line in text.splitlines():
        if line.startswith("| "):
            if not previous.startswith("|"):
                tables.append([])
            tables[-1].append(line)
        previous = line
    return {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in tables[table]
    }


def test_report_table_from_known_metrics(tmp_path: Path) -> None:
    cfg = {"task": "fmnist-resnet20", "profile": "quick", "seeds": [0, 1],
           "optimizers": {"adam": {}, "adahessian": {}},
           "train": {"epochs": 3, "batch_size": 64, "milestones": [2], "gamma": 0.1,
                     "train_subset": 0, "test_subset": 0, "max_steps": None,
                     "target_accuracy": 0.8}}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    write_run(tmp_path, "adam", 0, [0.5, 0.7, 0.6], 0.1)
    write_run(tmp_path, "adam", 1, [0.5, 0.7, 0.8], 0.1)
    write_run(tmp_path, "adahessian", 0, [0.6, 0.8, 0.9], 0.3)
    write_run(tmp_path, "adahessian", 1, [0.8, 0.9, 0.9], 0.3)

    text = make_report(tmp_path)
    assert (tmp_path / "report.md").read_text() == text
    rows = rows_of(text)
    header = rows.pop("optimizer")
    assert list(rows) == ["adam", "adahessian"]  # the config's order
    col = {name: header.index(name) for name in header}
    adam, ah = rows["adam"], rows["adahessian"]
    assert adam[col["seeds"]] == "2"
    assert adam[col["best test accuracy (%)"]] == "75.00 ± 7.07"  # best 70 and 80
    assert adam[col["final test accuracy (%)"]] == "70.00 ± 14.14"  # final 60 and 80
    assert ah[col["best test accuracy (%)"]] == "90.00 ± 0.00"
    # No step_cost.json: the loop's own step times (and the wall clock for the time axis).
    assert adam[col["step cost vs adam"]] == "1.00x"
    assert ah[col["step cost vs adam"]] == "3.00x"
    assert ah[col["ms / step"]] == "300 ± 0"
    assert "the wall clock of each run" in text
    # The target: adam's (the paper's baseline's) median final accuracy, 70 %.
    # adahessian reaches it at epoch 2 (20 s, 80 %) and epoch 1 (10 s, 80 %); adam at epoch 2.
    assert "target 70.00%: the paper's baseline's (adam) median final test_acc" in text
    assert ah[col["time to 70.00% (s)"]] == "15 ± 7"
    assert ah[col["steps to 70.00%"]] == "15 ± 7"
    assert ah[col["test accuracy (%) there"]] == "80.00 ± 0.00"
    assert adam[col["time to 70.00% (s)"]] == "20 ± 0"
    # Within adam's 30 s: the final epochs of both.
    assert ah[col["test accuracy (%) within 30 s"]] == "90.00 ± 0.00"
    # A given target overrides the baselines'.
    high = rows_of(make_report(tmp_path, target=0.95))
    assert high["adam"][high["optimizer"].index("time to 95.00% (s)")] == "not reached"
    assert high["adahessian"][high["optimizer"].index("time to 95.00% (s)")] == "not reached"
    # Paired by seed against the paper's baseline (adam for the image task): +30 and +10 points.
    paired = rows_of(text, 1)
    cells = dict(zip(paired["optimizer"], paired["adahessian"], strict=True))
    assert cells["baseline"] == "adam" and cells["seeds paired"] == "2"
    assert cells["final test accuracy (%): mean difference"] == "+20.00"
    # t(0.975, 1) = 12.706; std of (30, 10) = 14.142; half width 12.706 * 14.142 / sqrt(2) = 127.06
    assert cells["95 % interval"] == "[-107.06, +147.06]"
    assert "+1.80 points test accuracy over Adam" in text
    for name in PLOTS:
        assert matplotlib.image.imread(tmp_path / name).ndim == 3


def test_report_of_a_lower_is_better_metric_with_extra_columns(tmp_path: Path) -> None:
    metric = {"key": "test_ppl", "label": "test perplexity", "higher_is_better": False,
              "scale": 1.0, "fmt": ".1f", "extra": ["valid_ppl"]}  # fmt: skip
    cfg = {"task": "some-lm", "profile": "quick", "seeds": [0], "metric": metric,
           "optimizers": {"adamw": {}, "adahessian": {}},
           "train": {"epochs": 3, "batch_size": 20, "schedule": "inverse_sqrt",
                     "warmup_steps": 100, "max_steps": None, "target": 150.0}}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    for opt, ppls in [("adamw", [300.0, 160.0, 170.0]), ("adahessian", [200.0, 140.0, 120.0])]:
        write_run(tmp_path, opt, 0, [0.0] * 3, 0.1)
        path = tmp_path / f"{opt}-seed0" / "metrics.jsonl"
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        for line, ppl in zip(lines, ppls, strict=True):
            line["test_ppl"], line["valid_ppl"] = ppl, ppl + 1
        if opt == "adamw":  # valid best at epoch 1, where test is 300
            lines[0]["valid_ppl"] = 100.0
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))

    text = make_report(tmp_path)
    rows = rows_of(text)
    header = rows.pop("optimizer")
    col = {name: header.index(name) for name in header}
    assert rows["adamw"][col["best test perplexity"]] == "160.0"  # the lowest, not the highest
    assert rows["adahessian"][col["best test perplexity"]] == "120.0"
    assert rows["adamw"][col["final test perplexity"]] == "170.0"
    assert rows["adahessian"][col["final valid_ppl"]] == "121.0000"
    # The test value at the epoch with the best validation value (no peeking at the test set).
    assert rows["adamw"][col["test perplexity at best valid epoch"]] == "300.0"
    assert rows["adahessian"][col["test perplexity at best valid epoch"]] == "120.0"
    # Without adam in the run, step costs are relative to the first optimizer of the config.
    assert rows["adahessian"][col["step cost vs adamw"]] == "1.00x"
    # The target is adamw's final VALIDATION perplexity, 171 (lower is better): adahessian's
    # valid 141 at epoch 2 (20 s), where its test perplexity is 140; adamw at its epoch 1 (valid
    # 100, test 300).
    assert "whose valid_ppl falls to the target 171.0" in text
    assert rows["adahessian"][col["time to 171.0 (s)"]] == "20"
    assert rows["adahessian"][col["test perplexity there"]] == "140.0"
    assert rows["adamw"][col["time to 171.0 (s)"]] == "10"
    assert rows["adamw"][col["test perplexity there"]] == "300.0"
    # A given target: valid 150 reached by adahessian at epoch 2 and by adamw at epoch 1.
    given = rows_of(make_report(tmp_path, target=150.0))
    assert given["adahessian"][given["optimizer"].index("time to 150.0 (s)")] == "20"
    assert given["adamw"][given["optimizer"].index("time to 150.0 (s)")] == "10"
    # A task without a paper claim: the paired comparison is with the target's optimizer.
    paired = rows_of(text, 1)
    assert paired["adahessian"][paired["optimizer"].index("baseline")] == "adamw"
    assert paired["adahessian"][paired["optimizer"].index("95 % interval")] == "n/a (one seed)"
    assert "inverse_sqrt lr schedule, 100 warm-up steps" in text
    for name in plot_names("test_ppl"):
        assert matplotlib.image.imread(tmp_path / name).ndim == 3


# ----------------------------------------------------------------------------- unfinished folders

CFG = {"task": "fmnist-resnet20", "profile": "quick", "seeds": [0, 1],
       "optimizers": {"adam": {}, "adahessian": {}},
       "train": {"epochs": 3, "batch_size": 64, "milestones": [2], "gamma": 0.1,
                 "max_steps": None, "target_accuracy": 0.8}}  # fmt: skip


def set_hash(out: Path, run: str, value: str) -> None:
    path = out / run / "metrics.jsonl"
    lines = [{**json.loads(x), "config_hash": value} for x in path.read_text().splitlines()]
    path.write_text("".join(json.dumps(m) + "\n" for m in lines))


def test_report_leaves_out_runs_of_another_configuration(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(CFG))
    for seed in (0, 1):
        write_run(tmp_path, "adam", seed, [0.5, 0.6, 0.7], 0.1)
        # As a run of seed S alone writes it (the runs of a folder may come from parallel runs).
        one_seed = {**CFG, "seeds": [seed]}
        set_hash(tmp_path, f"adam-seed{seed}", config_hash(run_config(one_seed, "adam", seed)))
    write_run(tmp_path, "adahessian", 0, [0.9, 0.9, 0.9], 0.3)  # another lr
    other = {**CFG, "optimizers": {"adahessian": {"lr": 0.3}}}
    set_hash(tmp_path, "adahessian-seed0", config_hash(run_config(other, "adahessian", 0)))
    write_run(tmp_path, "sgd", 0, [0.2, 0.2, 0.2], 0.1)  # not in config.json
    write_run(tmp_path, "adahessian", 1, [0.8, 0.8, 0.8], 0.3)  # no hash (older files): kept

    text = make_report(tmp_path)
    rows = rows_of(text)
    header = rows.pop("optimizer")
    assert list(rows) == ["adam", "adahessian"]
    assert rows["adahessian"][header.index("seeds")] == "1"
    assert rows["adahessian"][header.index("final test accuracy (%)")] == "80.00"
    assert (
        "- Left out: adahessian-seed0 (another configuration than config.json's), "
        "sgd-seed0 (another configuration than config.json's)." in text.splitlines()
    )


def test_report_of_a_half_written_folder_names_what_is_incomplete(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(CFG))  # and no env.json
    write_run(tmp_path, "adam", 0, [0.5, 0.6, 0.7], 0.1)
    write_run(tmp_path, "adam", 1, [0.5], 0.1)  # interrupted after epoch 1
    (tmp_path / "adahessian-seed0").mkdir()
    (tmp_path / "adahessian-seed0" / "metrics.jsonl").write_text("")
    write_run(tmp_path, "adahessian", 1, [0.5, 0.6], 0.1)
    path = tmp_path / "adahessian-seed1" / "metrics.jsonl"
    path.write_text(path.read_text()[:-20])  # a truncated last line

    assert cli.main(["report", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    rows = rows_of(printed)
    assert list(rows) == ["optimizer", "adam"]
    # adam-seed1's only epoch (50 %) is not a final one: the table holds seed 0 alone.
    header = rows["optimizer"]
    assert rows["adam"][header.index("seeds")] == "1"
    assert rows["adam"][header.index("final test accuracy (%)")] == "70.00"
    assert (
        "- Incomplete (interrupted, or still running; `--resume` continues them; left out of "
        "every figure until they finish): adahessian-seed0 (no finished epoch), adam-seed1 (1 of "
        "3 epochs)." in printed
    )
    assert "- Left out: adahessian-seed1 (its metrics.jsonl is damaged: line 2 is not JSON)." in (
        printed
    )
    assert "- Machine: ?" in printed  # no env.json


def test_report_while_no_run_has_finished_shows_the_epochs_so_far(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(CFG))
    write_run(tmp_path, "adam", 0, [0.5, 0.6], 0.1)  # 2 of 3 epochs
    assert cli.main(["report", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    rows = rows_of(printed)
    assert rows["adam"][rows["optimizer"].index("final test accuracy (%)")] == "60.00"
    assert "- Progress report: no run has finished, so the figures are of the epochs so far." in (
        printed
    )
    assert "adam-seed0 (2 of 3 epochs)" in printed


@pytest.mark.parametrize("damage", ["missing", "not JSON"])
def test_report_without_a_sound_config_json_is_a_one_line_error(
    tmp_path: Path, damage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write_run(tmp_path, "adam", 0, [0.5], 0.1)
    if damage == "not JSON":
        (tmp_path / "config.json").write_text('{"task": "fmnist-res')
    assert cli.main(["report", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    word = "missing" if damage == "missing" else "damaged"
    assert err.startswith(f"adahessian-bench report: error: {tmp_path / 'config.json'} is {word}")
    assert not (tmp_path / "report.md").exists()


def test_report_into_a_folder_it_cannot_write_prints_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(CFG))
    for seed in (0, 1):
        write_run(tmp_path, "adam", seed, [0.5, 0.6, 0.7], 0.1)
    before = sorted(p.name for p in tmp_path.iterdir())
    if os.geteuid() == 0:  # root writes into a read-only folder: fail the writes instead

        def refuse(*args: object, **kwargs: object) -> None:
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", refuse)
        monkeypatch.setattr(report, "atomic_write_text", refuse)
    tmp_path.chmod(0o555)
    try:
        assert cli.main(["report", str(tmp_path)]) == 1
    finally:
        tmp_path.chmod(0o755)
    captured = capsys.readouterr()
    assert list(rows_of(captured.out)) == ["optimizer", "adam"]
    assert captured.err == (
        "adahessian-bench report: error: "
        f"the report could not be written into {tmp_path} (Permission denied); "
        "the report is printed above\n"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_report_reads_null_and_the_bare_nan_of_older_files(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(CFG))
    write_run(tmp_path, "adam", 0, [0.5, 0.6, 0.7], 0.1)
    write_run(tmp_path, "adam", 1, [0.5, 0.6, 0.9], 0.1)
    for seed, bad in [(0, "null"), (1, "NaN")]:  # the train loss of the last epoch
        path = tmp_path / f"adam-seed{seed}" / "metrics.jsonl"
        path.write_text(path.read_text().replace('"train_loss": 1.0', f'"train_loss": {bad}'))
    rows = rows_of(make_report(tmp_path))
    header = rows.pop("optimizer")
    assert rows["adam"][header.index("final test accuracy (%)")] == "80.00 ± 14.14"


def strict(line: str) -> dict:
    def refuse(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads(line, parse_constant=refuse)


def test_metrics_lines_are_strict_json() -> None:
    text = metrics_text([{"epoch": 1, "train_loss": float("nan"), "test_loss": float("inf"),
                          "test_acc": 0.1, "diverged": True}])  # fmt: skip
    assert strict(text) == {"epoch": 1, "train_loss": None, "test_loss": None, "test_acc": 0.1,
                            "diverged": True}  # fmt: skip


def test_a_diverged_run_writes_strict_json_and_reports(
    data_cache: Path, tmp_path: Path, tiny_profile: Callable[..., Path]
) -> None:
    toml = tiny_profile(lr=1e12, epochs=2)
    out = tmp_path / "out"
    argv = ["run", "fmnist-resnet20", "--config", str(toml), "--optimizers", "sgd"]
    assert cli.main([*argv, "--max-steps", "3", "--no-progress", "--out", str(out)]) == 0
    (line,) = (out / "sgd-seed0" / "metrics.jsonl").read_text().splitlines()
    m = strict(line)
    assert m["diverged"] is True and m["train_loss"] is None
    rows = rows_of(make_report(out))
    assert list(rows) == ["optimizer", "sgd (diverged)"]


def test_summary_over_folders_sets_adahessian_against_the_papers_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = {"task": "fmnist-resnet20", "profile": "quick", "seeds": [0, 1],
           "optimizers": {"sgd": {}, "adam": {}, "adahessian": {}},
           "train": {"epochs": 3, "batch_size": 64, "milestones": [2], "gamma": 0.1,
                     "max_steps": None}}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    write_run(tmp_path, "sgd", 0, [0.5, 0.6, 0.65], 0.1)
    write_run(tmp_path, "sgd", 1, [0.5, 0.6, 0.65], 0.1)
    write_run(tmp_path, "adam", 0, [0.5, 0.7, 0.6], 0.1)
    write_run(tmp_path, "adam", 1, [0.5, 0.7, 0.8], 0.1)
    write_run(tmp_path, "adahessian", 0, [0.6, 0.8, 0.9], 0.3)
    write_run(tmp_path, "adahessian", 1, [0.8, 0.9, 0.9], 0.3)
    assert cli.main(["summary", str(tmp_path)]) == 0
    rows = rows_of(capsys.readouterr().out)
    cells = dict(zip(rows["task"], rows["fmnist-resnet20"], strict=True))
    assert cells["AdaHessian"] == "adahessian" and cells["baseline"] == "adam 70.00 ± 14.14"
    assert cells["final"] == "90.00 ± 0.00"
    assert cells["paired difference [95 %]"] == "+20.00 [-107.06, +147.06]"
    assert cells["per epoch"] == "tie (the interval holds 0)"
    # Target: the paper's baseline's median final, adam's 70 % (sgd's is 65 %). adahessian reaches
    # it at 20 s and 10 s (median 15), adam at 20 s in both seeds.
    assert cells["time to target"] == "0.75x adam's (15 s vs 20 s)"
    assert cells["within the fastest first-order time"] == "90.00 ± 0.00 (sgd's 30 s)"
    assert "+1.80 points" in cells["paper's claim"]
    # A folder without AdaHessian beside a baseline: a one-line error.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["summary", str(empty)]) == 1
    assert "error" in capsys.readouterr().err


def test_publish_copies_the_results_and_no_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({**CFG, "seeds": [0, 1, 2]}))
    (out / "env.json").write_text("{}")
    for seed in (0, 1):
        write_run(out, "adam", seed, [0.5, 0.7, 0.8], 0.1)
        write_run(out, "adahessian", seed, [0.6, 0.8, 0.9], 0.3)
    (out / "adam-seed0" / "checkpoint.pt").write_bytes(b"weights")
    write_run(out, "adam", 2, [0.5], 0.1)  # unfinished (1 of 3 epochs): left behind
    dest = tmp_path / "docs" / "fmnist-resnet20-quick"
    assert cli.main(["report", str(out), "--publish", str(dest)]) == 0
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == sorted(["report.md", *PLOTS, "metrics/config.json", "metrics/env.json",
                            *(f"metrics/{o}-seed{s}.jsonl" for o in ("adam", "adahessian")
                              for s in (0, 1))])  # fmt: skip
    assert (dest / "report.md").read_text() == (out / "report.md").read_text()
    assert (dest / PLOTS[0]).read_bytes() == (out / PLOTS[0]).read_bytes()
    run = "adahessian-seed1"
    assert (dest / "metrics" / f"{run}.jsonl").read_text() == (
        out / run / "metrics.jsonl"
    ).read_text()


# ----------------------------------------------------------------------------- damaged files


def _edit_last_line(out: Path, run: str, edit: Callable[[dict], object]) -> None:
    path = out / run / "metrics.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    edit(lines[-1])
    path.write_text("".join(json.dumps(m) + "\n" for m in lines))


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda m: m.update(test_acc="0.8"), "line 3: test_acc is '0.8', not a number"),
        (lambda m: m.pop("test_acc"), "line 3 lacks test_acc"),
        (lambda m: m.update(test_acc=float("nan")),
         "line 3: test_acc is nan in a run not marked diverged"),
        (lambda m: m.update(test_acc=None), "line 3: test_acc is None in a run not marked"),
        (lambda m: m.update(epoch=2), "line 3 repeats epoch 2 (a duplicated or out-of-order"),
        (lambda m: m.update(step="30"), "line 3: step is '30', not a number"),
    ],
    ids=["string", "missing-key", "nan", "null-not-diverged", "duplicated-epoch", "step-string"],
)  # fmt: skip
def test_a_damaged_metrics_line_is_named_with_its_file_and_line_never_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], edit: Callable[[dict], object], named: str
) -> None:
    (tmp_path / "config.json").write_text(json.dumps(CFG))
    for seed in (0, 1):
        write_run(tmp_path, "adam", seed, [0.5, 0.6, 0.7], 0.1)
        write_run(tmp_path, "adahessian", seed, [0.5, 0.6, 0.8], 0.1)
    _edit_last_line(tmp_path, "adahessian-seed1", edit)
    assert cli.main(["report", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert f"- Left out: adahessian-seed1 (its metrics.jsonl is damaged: {named}" in printed
    rows = rows_of(printed)
    assert rows["adahessian"][rows["optimizer"].index("seeds")] == "1"


def _write_cost(out: Path, optimizers: dict[str, object]) -> None:
    (out / "step_cost.json").write_text(json.dumps({"optimizers": optimizers}))


@pytest.mark.parametrize(
    ("cost", "why"),
    [
        ({"adam": {"hessian_step_s": 0.1, "plain_step_s": 0.1}}, "it lacks adahessian"),
        ({"adam": {"hessian_step_s": 0.1, "plain_step_s": 0.1},
          "adahessian": {"hessian_step_s": -1.0, "plain_step_s": 0.1}},
         "damaged: adahessian's hessian_step_s is -1.0, not a time > 0"),
        ({"adam": {"hessian_step_s": 0.1, "plain_step_s": 0.1},
          "adahessian": {"hessian_step_s": float("nan"), "plain_step_s": 0.1}},
         "damaged: adahessian's hessian_step_s is nan, not a time > 0"),
        ("{not json", "damaged: not the JSON the harness writes"),
    ],
    ids=["lacks-an-optimizer", "negative", "nan", "not-json"],
)  # fmt: skip
def test_a_step_cost_that_cannot_time_every_optimizer_is_not_mixed_with_wall_clocks(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], cost: object, why: str
) -> None:
    """Before: an optimizer missing from step_cost.json had its wall clock set against the
    others' step costs (a 5.35x that was 4.00x)."""
    (tmp_path / "config.json").write_text(json.dumps(CFG))
    for seed in (0, 1):
        write_run(tmp_path, "adam", seed, [0.5, 0.6, 0.7], 0.1)
        write_run(tmp_path, "adahessian", seed, [0.5, 0.6, 0.8], 0.1)
    if isinstance(cost, str):
        (tmp_path / "step_cost.json").write_text(cost)
    else:
        _write_cost(tmp_path, cost)  # type: ignore[arg-type]
    assert cli.main(["report", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert f"- Time: the wall clock of each run (`step_cost.json` is not used: {why})" in printed


@pytest.mark.parametrize(
    ("dest", "says"),
    [
        ("{out}", "is the run folder itself: publish to another folder"),
        ("{out}/published", "is inside the run folder"),
        ("{out}/adam-seed0/x", "is inside the run folder"),
        ("{file}", "is an existing file: name a folder"),
    ],
    ids=["the-folder", "inside", "inside-a-run", "a-file"],
)
def test_publish_into_the_run_folder_or_onto_a_file_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], dest: str, says: str
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(CFG))
    for seed in (0, 1):
        write_run(out, "adam", seed, [0.5, 0.6, 0.7], 0.1)
    make_report(out)
    (tmp_path / "notes.txt").write_text("mine")
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()}
    target = dest.replace("{out}", str(out)).replace("{file}", str(tmp_path / "notes.txt"))
    assert cli.main(["report", str(out), "--publish", target]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "Traceback" not in err[0]
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in tmp_path.rglob("*") if p.is_file()}
    assert after == before


def test_time_to_target_is_read_at_the_resolution_of_the_evaluations_within_epochs(
    tmp_path: Path,
) -> None:
    """With ``eval_every`` the target is reached at the evaluation where it is, not booked at the
    end of that epoch; the final metric is still the last epoch line's."""
    cfg = {**CFG, "seeds": [0], "optimizers": {"adam": {}},
           "train": {**CFG["train"], "epochs": 2}}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    run = tmp_path / "adam-seed0"
    run.mkdir()
    points = [("eval", 0.5, 5, 0.5), ("epoch", 1, 10, 0.6), ("eval", 1.5, 15, 0.8),
              ("epoch", 2, 20, 0.85)]  # fmt: skip
    lines = [{"optimizer": "adam", "seed": 0, "kind": kind, "epoch": epoch, "step": step,
              "test_acc": acc, "train_time_s": float(step), "wall_time_s": float(step)}
             for kind, epoch, step, acc in points]  # fmt: skip
    for m in lines[1::2]:  # what only epoch lines hold
        m.update(mean_step_time_s=1.0, peak_memory_mb=10.0)
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    df, incomplete, left_out = results.read_runs(tmp_path, cfg)
    assert not incomplete and not left_out
    runs = compare.per_run(results.with_time(df, cfg, {}), results.ACCURACY)
    (r,) = [row for _, row in runs.iterrows()]
    assert r["final"] == 0.85 and r["epochs"] == 2 and r["steps"] == 20
    assert compare.reach(r, 0.75, True, "test_acc") == {"steps": 15.0, "time": 15.0, "test": 0.8}


def _final_only_run(out: Path, cfg: dict, opt: str, seed: int, valid: float, steps: int) -> None:
    """A finished run of ``cfg`` whose last epoch ends at ``steps`` with ``valid`` validation
    accuracy (and the test accuracy 0.01 below)."""
    run = out / f"{opt}-seed{seed}"
    run.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(cfg))
    line = {"optimizer": opt, "seed": seed, "kind": "epoch", "epoch": 3, "step": steps,
            "valid_acc": valid, "test_acc": valid - 0.01, "train_time_s": 1.0,
            "wall_time_s": 1.0, "mean_step_time_s": 0.1, "peak_memory_mb": 1.0}  # fmt: skip
    (run / "metrics.jsonl").write_text(json.dumps(line) + "\n")


def _speedup_runs(main: Path, root: Path) -> list[Path]:
    """Adam and AdaHessian at budget 1 under ``main`` (2 seeds, AdaHessian's final validation
    0.85 / 0.86 in 30 steps, Adam's 0.80 / 0.81; step costs 0.1 s and 0.2 s), and Adam at budgets
    1.5 and 2 under ``root/budget=B`` (0.84 / 0.85 in 45 steps, 0.87 / 0.88 in 60), each line
    carrying its own point's config hash. Returns the budget folders."""
    cfg = {**CFG, "optimizers": {"adam": {}, "adahessian": {}}}
    for seed, (base, ours) in enumerate([(0.80, 0.85), (0.81, 0.86)]):
        _final_only_run(main, cfg, "adam", seed, base, 30)
        _final_only_run(main, cfg, "adahessian", seed, ours, 30)
    _write_cost(main, {"adam": {"hessian_step_s": 0.1, "plain_step_s": 0.1},
                       "adahessian": {"hessian_step_s": 0.2, "plain_step_s": 0.2}})  # fmt: skip
    budgets = []
    for budget, steps, finals in [(1.5, 45, (0.84, 0.85)), (2, 60, (0.87, 0.88))]:
        d = root / f"budget={budget}"
        budget_cfg = {**cfg, "optimizers": {"adam": {}}, "train": {**CFG["train"],
                                                                   "budget": budget}}  # fmt: skip
        for seed, valid in enumerate(finals):
            _final_only_run(d, budget_cfg, "adam", seed, valid, steps)
            h = config_hash(run_config(budget_cfg, "adam", seed))  # each point's own hash
            set_hash(d, f"adam-seed{seed}", h)
        budgets.append(d)
    return budgets


def test_step_speedup_interpolates_the_baselines_budgets_to_adahessians_final_metric(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main = tmp_path / "main"
    budgets = _speedup_runs(main, tmp_path)
    (row,) = overview.step_speedup(main, budgets).to_dict("records")
    # AdaHessian's median final validation: 0.855 in 30 steps (6 s). Adam reaches it after
    # 45 + 15 x 0.015 / 0.03 = 52.5 steps (seed 0) and 45 + 15 x 0.005 / 0.03 = 47.5 (seed 1).
    assert row["step speedup"] == "1.67x [1.58, 1.75]"
    assert row["time speedup"] == "0.83x [0.79, 0.88]"  # x 0.1 s / 6 s
    assert row["budgets"] == "1, 1.5, 2" and row["baseline"] == "adam"
    # Through summary --budgets: the two columns beside the others.
    assert cli.main(["summary", str(main), "--budgets", *map(str, budgets)]) == 0
    assert "1.67x [1.58, 1.75]" in capsys.readouterr().out


def _curve_run(out: Path, cfg: dict, opt: str, seed: int, valids: list[float]) -> None:
    """A finished run of ``cfg`` evaluated every 10 steps, with these validation accuracies (the
    test accuracy 0.01 below), the last at the end of its last epoch; its config hash its own."""
    run = out / f"{opt}-seed{seed}"
    run.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(cfg))
    lines = [{"optimizer": opt, "seed": seed, "kind": "eval", "epoch": i + 1, "step": 10 * (i + 1),
              "valid_acc": v, "test_acc": v - 0.01, "train_time_s": 1.0, "wall_time_s": 1.0,
              "config_hash": config_hash(run_config(cfg, opt, seed))}
             for i, v in enumerate(valids)]  # fmt: skip
    lines[-1].update(kind="epoch", mean_step_time_s=0.1, peak_memory_mb=1.0)
    (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))


def test_step_speedup_reads_every_evaluation_of_a_schedule_without_horizon(
    tmp_path: Path,
) -> None:
    """With an inverse-sqrt schedule a budget-2 run passes through every shorter budget
    (test_bench_train checks it), so the steps the baseline needs are read at its evaluations,
    not interpolated between the budgets' final metrics."""
    train_cfg = {"epochs": 3, "batch_size": 64, "schedule": "inverse_sqrt", "warmup_steps": 5,
                 "max_steps": None, "target_accuracy": 0.8}  # fmt: skip
    cfg = {**CFG, "train": train_cfg}
    main, budget = tmp_path / "main", tmp_path / "budget=2"
    base = ([0.70, 0.78, 0.80, 0.83, 0.85, 0.86], [0.71, 0.79, 0.81, 0.84, 0.87, 0.88])
    for seed, (ours, theirs) in enumerate(zip((0.85, 0.86), base, strict=True)):
        _curve_run(main, cfg, "adahessian", seed, [0.80, 0.83, ours])
        _curve_run(main, cfg, "adam", seed, theirs[:3])  # the budget-2 run's first 30 steps
        budget_cfg = {**cfg, "optimizers": {"adam": {}}, "train": {**train_cfg, "budget": 2}}
        _curve_run(budget, budget_cfg, "adam", seed, theirs)
    _write_cost(main, {"adam": {"hessian_step_s": 0.1, "plain_step_s": 0.1},
                       "adahessian": {"hessian_step_s": 0.2, "plain_step_s": 0.2}})  # fmt: skip
    (row,) = overview.step_speedup(main, [budget]).to_dict("records")
    # Target 0.855 (the median), AdaHessian's 30 steps (6 s). Adam: seed 0 between (50, 0.85)
    # and (60, 0.86): 55 steps; seed 1 between (40, 0.84) and (50, 0.87): 45 steps. (The two
    # budgets' finals alone, (30, 0.80) and (60, 0.86), would give 57.5 for seed 0.)
    assert row["step speedup"] == "1.67x [1.50, 1.83]"
    assert row["time speedup"] == "0.83x [0.75, 0.92]"
    assert row["budgets"] == "1, 2 (every evaluation)"
    # A budget run of another schedule is no budget of these runs.
    other = tmp_path / "cosine"
    _curve_run(other, {**budget_cfg, "train": {**budget_cfg["train"], "schedule": "cosine"}},
               "adam", 0, base[0])  # fmt: skip
    with pytest.raises(ValueError, match="another lr schedule"):
        overview.step_speedup(main, [other])


def test_steps_needed_is_nan_beyond_the_largest_budget_and_the_first_where_it_is_reached() -> None:
    points = [(30, 0.80), (45, 0.84), (60, 0.87)]
    assert math.isnan(compare.steps_needed(points, 0.9, higher=True))
    assert compare.steps_needed(points, 0.7, higher=True) == 30
    assert compare.steps_needed(points, 0.82, higher=True) == pytest.approx(37.5)
    assert compare.steps_needed([(30, 3.0), (60, 2.0)], 2.5, higher=False) == pytest.approx(45)


def test_the_target_is_the_papers_baseline_even_where_another_first_order_is_better() -> None:
    import pandas as pd

    runs = pd.DataFrame({"optimizer": ["sgd", "sgd", "adam", "adam", "adahessian"],
                         "judged_final": [0.9, 0.92, 0.8, 0.84, 0.95]})  # fmt: skip
    # fmnist's paper baseline is adam (the paper's claim is against it), though sgd is better.
    assert compare.baseline_target(runs, True, "fmnist-resnet20") == (pytest.approx(0.82), "adam")
    # Without a task, or where the baseline did not run: the best first-order optimizer.
    assert compare.baseline_target(runs, True) == (pytest.approx(0.91), "sgd")
    no_adam = runs[runs["optimizer"] != "adam"]
    assert compare.baseline_target(no_adam, True, "fmnist-resnet20") == (pytest.approx(0.91), "sgd")
    assert compare.baseline_target(runs, False, "brown-lm") == (pytest.approx(0.82), "adam")


def test_published_folders_read_as_the_folders_they_were_published_from(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`summary` and `report` read what `report --publish` and a budget sweep's publish wrote
    (docs/results/NAME: metrics/config.json, metrics/OPT-seedS.jsonl, and POINT_OPT-seedS.jsonl
    with only the first point's config.json), with the same figures as the originals."""
    from adahessian_bench import sweep

    main, sw = tmp_path / "main", tmp_path / "budget"
    points = [
        {"value": budget, "dir": d.name, "hyperparameters": {"adam": {}}}
        for budget, d in zip((1.5, 2), _speedup_runs(main, sw), strict=True)
    ]
    (sw / "sweep.json").write_text(json.dumps({"task": CFG["task"], "param": "budget",
                                               "points": points}))  # fmt: skip
    make_report(main)
    (sw / "report.md").write_text("a sweep report\n")
    pub_main, pub_sw = tmp_path / "pub" / "main", tmp_path / "pub" / "budget"
    report.publish(main, pub_main)
    sweep.publish(sw, pub_sw)
    assert sorted(p.name for p in (pub_sw / "metrics").iterdir()) == [
        "budget-1.5_adam-seed0.jsonl", "budget-1.5_adam-seed1.jsonl",
        "budget-2_adam-seed0.jsonl", "budget-2_adam-seed1.jsonl", "config.json",
    ]  # fmt: skip
    assert cli.main(["summary", str(main), "--budgets", str(sw)]) == 0
    original = capsys.readouterr().out
    assert cli.main(["summary", str(pub_main), "--budgets", str(pub_sw)]) == 0
    published = capsys.readouterr().out
    assert "1.67x [1.58, 1.75]" in original and published == original.replace(
        str(main), str(pub_main)
    )
    # The budget runs of the published sweep: every point's runs, none left out by its hash.
    folders = overview.budget_runs([pub_sw])
    assert [str(f) for f in folders] == [
        f"{pub_sw} (point budget-1.5)",
        f"{pub_sw} (point budget-2)",
    ]
    for f, budget in zip(folders, (1.5, 2), strict=True):
        df, incomplete, left_out = results.read_runs(f, results.read_config(f))
        assert len(df) == 2 and not incomplete and not left_out
        assert results.read_config(f)["train"]["budget"] == budget
    # The report of a published run folder regenerates from its metrics, as it was.
    assert make_report(pub_main) == (main / "report.md").read_text()


RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def test_summary_keeps_the_rows_and_columns_it_is_asked_for(
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder = str(RESULTS / "brown-lm-tuned")
    args = ["summary", folder, "--optimizers", "adahessian-fd,adahessian"]
    assert cli.main([*args, "--columns", "AdaHessian,per epoch,final"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "AdaHessian",
        "per epoch",
        "final",
    ]
    # The rows in the summary's order (the folder's), not the option's.
    assert [line.split("|")[1].strip() for line in lines[2:]] == ["adahessian", "adahessian-fd"]
    assert cli.main(["summary", folder]) == 0
    full = capsys.readouterr().out.strip().splitlines()
    assert len(full) == 6 and "paper's claim" in full[0]  # four AdaHessians, every column


@pytest.mark.parametrize(("option", "words"), [
    (["--optimizers", "adahesian"], "--optimizers adahesian: no row of the summary is of it "
                                    "(did you mean adahessian?)"),
    (["--optimizers", "adamw"], "no row of the summary is of it"),  # a baseline has no row
    (["--columns", "task,fnal"], "--columns 'fnal': the summary has no such column (did you mean "
                                 "final?)"),
    (["--columns", "step speedup"], "no such column"),  # only with --budgets
    (["--columns", "task,task"], "task named twice"),
    (["--optimizers", " , "], "no name in"),
])  # fmt: skip
def test_summary_refuses_rows_or_columns_it_does_not_have(
    option: list[str], words: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["summary", str(RESULTS / "brown-lm-tuned"), *option]) in (1, 2)
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) <= 2


@pytest.mark.parametrize(("sweep_json", "words"), [
    ({"param": "lr", "points": []}, "is not a sweep of the step budget (--param budget)"),
    ({"param": "budget", "points": [{"value": 1.5}]}, "sweep.json is damaged"),
    ({"param": "budget", "points": ["budget=1.5"]}, "sweep.json is damaged"),
])  # fmt: skip
def test_summary_refuses_budgets_that_are_not_a_budget_sweep(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    folder_state: Callable[[Path], dict[str, bytes]],
    sweep_json: dict,
    words: str,
) -> None:
    main, sw = tmp_path / "main", tmp_path / "budget"
    _speedup_runs(main, sw)
    (sw / "sweep.json").write_text(json.dumps(sweep_json))
    before = folder_state(tmp_path)
    assert cli.main(["summary", str(main), "--budgets", str(sw)]) == 1
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert folder_state(tmp_path) == before
