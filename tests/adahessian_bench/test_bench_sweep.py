"""Sweeps: grid expansion, refused input, the sweep report on known metrics, a tiny real sweep."""

from __future__ import annotations

import copy
import errno
import json
import math
import re
from pathlib import Path

import matplotlib.figure
import matplotlib.image
import pandas as pd
import pytest

from adahessian_bench import cli, config, sweep, task_images, train
from adahessian_bench.results import ACCURACY


def base_cfg(optimizer_names: list[str], seeds: int = 1) -> dict:
    profile = config.load("fmnist-resnet20", "quick")
    return train.resolve("fmnist-resnet20", profile, "quick", optimizer_names, seeds)


def table_rows(text: str) -> dict[str, list[str]]:
    """The Markdown table rows of a report, by their first cell (the header row included)."""
    return {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in text.splitlines()
        if line.startswith("| ")
    }


# ----------------------------------------------------------------------------- grid expansion


def test_lr_values_multiply_each_optimizers_profile_lr() -> None:
    base = base_cfg(["adahessian", "adamw"])
    profile_lr = base["optimizers"]["adahessian"]["lr"]
    grid = sweep.expand(base, "lr", [0.5, 2.0])
    assert grid.swept == ["adahessian", "adamw"] and grid.reference is None
    for mult, cfg in zip([0.5, 2.0], grid.points, strict=True):
        for opt in ["adahessian", "adamw"]:
            hp, base_hp = cfg["optimizers"][opt], base["optimizers"][opt]
            assert hp["lr"] == pytest.approx(mult * base_hp["lr"])
            # Only lr changes (weight decay and the rest as in the profile).
            assert {k: v for k, v in hp.items() if k != "lr"} == {
                k: v for k, v in base_hp.items() if k != "lr"
            }
        assert cfg["train"] == base["train"] and cfg["seeds"] == base["seeds"]
    assert base["optimizers"]["adahessian"]["lr"] == profile_lr  # the base is left alone
    desc = grid.describe("cmd")
    assert [p["dir"] for p in desc["points"]] == ["lr=0.5", "lr=2"]
    assert desc["multiplier"] is True and desc["reference"] == []


@pytest.mark.parametrize(
    ("name", "values"),
    [("hessian_power", [0.5, 1.0]), ("update_interval", [1, 10]), ("block_size", [1, 32])],
)
def test_adahessian_only_params_change_adahessian_alone(name: str, values: list) -> None:
    base = base_cfg(["adahessian", "adamw", "sgd"])
    grid = sweep.expand(base, name, values)
    assert grid.swept == ["adahessian"]
    for v, cfg in zip(values, grid.points, strict=True):
        assert list(cfg["optimizers"]) == ["adahessian"]
        assert cfg["optimizers"]["adahessian"] == {**base["optimizers"]["adahessian"], name: v}
    # The others run once, at their profile settings.
    assert grid.reference is not None
    assert grid.reference["optimizers"] == {
        "adamw": base["optimizers"]["adamw"],
        "sgd": base["optimizers"]["sgd"],
    }
    assert grid.describe()["reference_dir"] == "reference"
    assert sweep.expand(base_cfg(["adahessian"]), name, values).reference is None


def test_budget_values_set_every_optimizers_steps_and_change_nothing_else() -> None:
    base = base_cfg(["adahessian", "adam"])
    values = sweep.parse_values("budget", "1,1.5,2")
    grid = sweep.expand(base, "budget", values)
    assert grid.swept == ["adahessian", "adam"] and grid.reference is None
    for v, cfg in zip(values, grid.points, strict=True):
        assert cfg["train"] == {**base["train"], "budget": v}
        assert cfg["optimizers"] == base["optimizers"]
    assert [p["dir"] for p in grid.describe()["points"]] == ["budget=1", "budget=1.5", "budget=2"]
    with pytest.raises(ValueError, match="'0' is not a positive multiple of the profile's steps"):
        sweep.parse_values("budget", "0,1")


def test_a_sweep_loads_its_data_once_per_distinct_data_configuration(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loads: list[dict] = []

    def load(self: object, cfg: dict) -> int:
        loads.append(cfg)
        return len(loads)

    monkeypatch.setattr(task_images.ImageTask, "load", load)
    grid = sweep.expand(base_cfg(["adahessian", "adamw"]), "update_interval", [1, 2, 4])
    assert grid.reference is not None
    cfgs = [*grid.points, grid.reference]
    assert sweep.load_data(cfgs) == [1, 1, 1, 1]  # the points differ in their optimizers only
    assert loads == [grid.points[0]]
    other = copy.deepcopy(grid.points[1])
    other["train"]["train_subset"] = 100  # a key that changes what load(cfg) returns
    assert sweep.load_data([grid.points[0], other, grid.points[2]]) == [2, 3, 2]


def test_values_are_parsed_per_parameter() -> None:
    assert sweep.parse_values("lr", "0.25, 1,4") == [0.25, 1.0, 4.0]
    assert sweep.parse_values("hessian_power", "0.5,1") == [0.5, 1.0]
    assert sweep.parse_values("update_interval", "1,2,10") == [1, 2, 10]
    assert sweep.point_dir("update_interval", 10) == "update_interval=10"
    assert sweep.point_dir("lr", 1.0) == "lr=1"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("momentum", "0.9", "unknown sweep parameter"),
        ("hessian_power", "0.5,1.5", "(0, 1]"),
        ("hessian_power", "0", "(0, 1]"),
        ("block_size", "2.5", "positive integer"),
        ("update_interval", "0,2", "positive integer"),
        ("lr", "-1", "positive"),
        ("lr", "nan", "positive"),
        ("lr", "1,1", "repeated"),
        ("lr", ",", "no values"),
    ],
)
def test_bad_values_are_refused(name: str, text: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        sweep.parse_values(name, text)


def test_adahessian_only_param_without_adahessian_is_refused() -> None:
    with pytest.raises(ValueError, match="must include adahessian"):
        sweep.expand(base_cfg(["adamw", "sgd"]), "hessian_power", [0.5])


@pytest.mark.parametrize(
    "argv",
    [
        ["--param", "momentum", "--values", "0.9"],
        ["--param", "hessian_power", "--values", "0.5,2"],
        ["--param", "update_interval", "--values", "1,0.5"],
        ["--param", "block_size", "--values", "0"],
        ["--param", "hessian_power", "--values", "0.5", "--optimizers", "adamw,sgd"],
        ["--param", "lr", "--values", "1", "--optimizers", "adahessian,lion"],
    ],
)
def test_cli_refuses_bad_sweeps_before_writing_anything(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sweep"
    assert cli.main(["sweep", "fmnist-resnet20", *argv, "--out", str(out)]) == 2
    assert "error:" in capsys.readouterr().err
    assert not out.exists()


# ----------------------------------------------------------------------------- report


def write_point(folder: Path, runs: dict[tuple[str, int], list[float]], diverged: bool = False):
    """A run folder with the given test accuracies per (optimizer, seed)."""
    folder.mkdir(parents=True)
    epochs = max(len(accs) for accs in runs.values())  # every run finished
    (folder / "config.json").write_text(
        json.dumps({"task": "fmnist-resnet20", "profile": "quick", "metric": ACCURACY,
                    "train": {"epochs": epochs, "batch_size": 64, "milestones": [1],
                              "gamma": 0.1}})
    )  # fmt: skip
    for (opt, seed), accs in runs.items():
        run = folder / f"{opt}-seed{seed}"
        run.mkdir()
        lines = [
            {"optimizer": opt, "seed": seed, "epoch": i + 1, "test_acc": acc,
             "wall_time_s": 30.0 * (i + 1), **({"diverged": True} if diverged else {})}
            for i, acc in enumerate(accs)
        ]  # fmt: skip
        (run / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))


def write_sweep(out: Path, name: str, values: list, swept: list[str], reference: list[str]):
    points = []
    for v in values:
        hp = {o: {"lr": 0.1 * v if name == "lr" else 0.1} for o in swept}
        points.append({"value": v, "dir": sweep.point_dir(name, v), "hyperparameters": hp})
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.json").write_text(
        json.dumps({"task": "fmnist-resnet20", "profile": "quick", "param": name,
                    "multiplier": name == "lr", "values": values, "points": points,
                    "swept": swept, "reference": reference,
                    "reference_dir": "reference" if reference else None, "seeds": [0, 1],
                    "command": "adahessian-bench sweep ..."})
    )  # fmt: skip


def test_sweep_report_table_and_plot_from_known_metrics(tmp_path: Path) -> None:
    write_sweep(tmp_path, "lr", [0.5, 2.0], ["adahessian", "adamw"], [])
    write_point(
        tmp_path / "lr=0.5",
        {
            ("adahessian", 0): [0.5, 0.8],
            ("adahessian", 1): [0.9, 0.6],
            ("adamw", 0): [0.7, 0.7],
            ("adamw", 1): [0.7, 0.7],
        },
    )
    write_point(
        tmp_path / "lr=2",
        {
            ("adahessian", 0): [0.4, 0.3],
            ("adahessian", 1): [0.2, 0.1],
            ("adamw", 0): [0.6, 0.9],
            ("adamw", 1): [0.6, 0.9],
        },
    )

    assert cli.main(["report", str(tmp_path)]) == 0
    text = (tmp_path / "report.md").read_text()
    rows = table_rows(text)
    header = rows.pop("lr multiplier")
    col = {name: header.index(name) for name in header}
    assert list(rows) == ["0.5", "2", "optimizer", "adahessian", "adamw"]
    # Final: the last epoch, mean ± std (ddof 1) over seeds, in percent; best: the best epoch's.
    assert rows["0.5"][col["adahessian final"]] == "70.00 ± 14.14"
    assert rows["0.5"][col["adahessian best"]] == "85.00 ± 7.07"
    assert rows["0.5"][col["adamw final"]] == "70.00 ± 0.00"
    assert rows["2"][col["adahessian final"]] == "20.00 ± 14.14"
    assert rows["2"][col["adamw best"]] == "90.00 ± 0.00"
    assert rows["0.5"][col["adahessian lr"]] == "0.05"  # the absolute lr of the point
    assert rows["2"][col["adamw lr"]] == "0.2"
    assert "Training + evaluation time of all runs: 8.0 min" in text
    image = matplotlib.image.imread(tmp_path / "lr.png")
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_sweep_report_draws_references_and_marks_divergence(tmp_path: Path) -> None:
    write_sweep(tmp_path, "update_interval", [1, 10, 20], ["adahessian"], ["adamw"])
    write_point(
        tmp_path / "update_interval=1", {("adahessian", 0): [0.8], ("adahessian", 1): [0.9]}
    )
    write_point(
        tmp_path / "update_interval=10",
        {("adahessian", 0): [0.1], ("adahessian", 1): [0.1]},
        diverged=True,
    )
    write_point(tmp_path / "reference", {("adamw", 0): [0.85], ("adamw", 1): [0.85]})
    # update_interval=20 not run (yet): reported as such.

    text = sweep.make_report(tmp_path)
    rows = table_rows(text)
    header = rows.pop("update_interval")
    col = {name: header.index(name) for name in header}
    assert list(rows) == [
        "1", "10", "optimizer", "adahessian", "reference (profile settings)", "adamw"
    ]  # fmt: skip
    # Sensitivity: every seed of interval 10 diverged: the worst, and never near the best.
    assert rows["adahessian"] == ["1", "85.00", "diverged", "1", "2/4", "n/a"]
    assert rows["1"][col["adahessian final"]] == "85.00 ± 7.07"
    # Diverged runs have no value: left out of the mean, counted apart.
    assert rows["10"][col["adahessian final"]] == "n/a (2/2 diverged)"
    assert rows["adamw"] == ["85.00 ± 0.00", "85.00 ± 0.00"]
    assert "Not run yet: update_interval=20" in text
    assert (tmp_path / "update_interval.png").is_file()


def test_sweep_report_sensitivity_from_known_metrics(tmp_path: Path) -> None:
    write_sweep(tmp_path, "lr", [0.5, 1.0, 2.0, 4.0], ["adahessian", "adamw"], [])
    write_point(tmp_path / "lr=0.5", {("adahessian", 0): [0.85], ("adamw", 0): [0.50],
                                      ("adamw", 1): [0.70]})  # fmt: skip
    run = tmp_path / "lr=0.5" / "adahessian-seed1"  # a diverged seed beside a good one
    run.mkdir()
    line = {"optimizer": "adahessian", "seed": 1, "epoch": 1, "test_acc": 0.1,
            "wall_time_s": 3.0, "diverged": True}  # fmt: skip
    (run / "metrics.jsonl").write_text(json.dumps(line) + "\n")
    # Means: adahessian 0.80, 0.79 (within 2 % of 0.80: 0.784), 0.78 (not); adamw 0.6, 0.7, 0.9,
    # 0.89 (within 2 % of 0.9: 0.882).
    write_point(tmp_path / "lr=1", {("adahessian", 0): [0.8], ("adahessian", 1): [0.8],
                                    ("adamw", 0): [0.7], ("adamw", 1): [0.7]})  # fmt: skip
    write_point(tmp_path / "lr=2", {("adahessian", 0): [0.78], ("adahessian", 1): [0.80],
                                    ("adamw", 0): [0.9], ("adamw", 1): [0.9]})  # fmt: skip
    write_point(tmp_path / "lr=4", {("adahessian", 0): [0.78], ("adahessian", 1): [0.78],
                                    ("adamw", 0): [0.88], ("adamw", 1): [0.9]})  # fmt: skip
    text = sweep.make_report(tmp_path)
    rows = table_rows(text)
    assert rows["optimizer"] == [
        "best value", "final there", "worst", "within 2 % of its best", "diverged runs",
        "chosen by validation"
    ]  # fmt: skip
    # lr=0.5's 0.85 is one survivor beside a diverged seed: not the best.
    assert rows["adahessian"] == ["1", "80.00", "78.00", "1, 2", "1/8", "n/a"]
    assert rows["adamw"] == ["2", "90.00", "60.00", "2, 4", "0/8", "n/a"]
    assert "within 2 % (relative) of the best" in text


def test_sensitivity_prints_the_same_mean_as_the_grid_table(tmp_path: Path) -> None:
    # 0.8575 and 0.844: the mean of the fractions, scaled, prints 85.08; the mean of the scaled
    # values (the grid table's cell) 85.07. Both tables must print the same digits.
    write_sweep(tmp_path, "lr", [1.0, 2.0], ["adahessian"], [])
    write_point(tmp_path / "lr=1", {("adahessian", 0): [0.8575], ("adahessian", 1): [0.844]})
    write_point(tmp_path / "lr=2", {("adahessian", 0): [0.8], ("adahessian", 1): [0.8]})
    rows = table_rows(sweep.make_report(tmp_path))
    header = rows["lr multiplier"]
    assert rows["1"][header.index("adahessian final")] == "85.07 ± 0.95"
    assert rows["adahessian"][:3] == ["1", "85.07", "80.00"]


def test_sensitivity_lower_is_better() -> None:

    def point(finals: list[float]) -> pd.DataFrame:
        rows = [{"optimizer": "adahessian", "seed": s, "final": f, "diverged": math.isnan(f)}
                for s, f in enumerate(finals)]  # fmt: skip
        return pd.DataFrame(rows)

    nan = float("nan")
    per_point = [(0.5, point([100.0, 102.0])), (1.0, point([92.0, 90.0])),
                 (2.0, point([92.5, 93.0])), (4.0, point([nan, nan]))]  # fmt: skip
    t = sweep.sensitivity(per_point, ["adahessian"], higher=False, fmt=".1f", scale=1.0)
    row = t.iloc[0].to_dict()
    # Best 91.0 at 1; 92.75 is within 2 % (<= 92.82); 101 is not; every seed of 4 diverged.
    assert row == {"optimizer": "adahessian", "best value": "1", "final there": "91.0",
                   "worst": "diverged", "within 2 % of its best": "1, 2",
                   "diverged runs": "2/8", "chosen by validation": "n/a"}  # fmt: skip


def test_publish_copies_a_sweeps_results_and_no_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, dest = tmp_path / "sweep", tmp_path / "docs" / "sweep-x"
    write_sweep(out, "update_interval", [1, 10, 20], ["adahessian"], ["adamw"])
    write_point(out / "update_interval=1", {("adahessian", 0): [0.8], ("adahessian", 1): [0.9]})
    write_point(out / "update_interval=10", {("adahessian", 0): [0.7], ("adahessian", 1): [0.6]})
    write_point(out / "reference", {("adamw", 0): [0.85], ("adamw", 1): [0.85]})
    (out / "update_interval=1" / "adahessian-seed0" / "checkpoint.pt").write_bytes(b"ckpt")
    # An unfinished run (1 of 2 epochs) beside finished ones: left behind, as the report leaves it.
    write_point(out / "update_interval=20", {("adahessian", 0): [0.7, 0.7],
                                             ("adahessian", 1): [0.7]})  # fmt: skip
    (out / "update_interval=1" / "env.json").write_text('{"cpu_model": "X"}')
    # A sweep of a --config profile file: the file goes along as profile.toml.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "my.toml").write_text("# my profile\n")
    cfg_path = out / "update_interval=1" / "config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "profile": "my.toml"}))

    assert cli.main(["report", str(out), "--publish", str(dest)]) == 0
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == [
        "metrics/config.json", "metrics/env.json",
        "metrics/reference_adamw-seed0.jsonl", "metrics/reference_adamw-seed1.jsonl",
        "metrics/update_interval-10_adahessian-seed0.jsonl",
        "metrics/update_interval-10_adahessian-seed1.jsonl",
        "metrics/update_interval-1_adahessian-seed0.jsonl",
        "metrics/update_interval-1_adahessian-seed1.jsonl",
        "metrics/update_interval-20_adahessian-seed0.jsonl",
        "profile.toml", "report.md", "sweep.json", "update_interval.png",
    ]  # fmt: skip
    src = out / "update_interval=10" / "adahessian-seed1" / "metrics.jsonl"
    assert (dest / "metrics" / "update_interval-10_adahessian-seed1.jsonl").read_bytes() == (
        src.read_bytes()
    )
    assert (dest / "report.md").read_text() == (out / "report.md").read_text()
    assert (dest / "profile.toml").read_text() == "# my profile\n"


def test_sweep_report_leaves_out_runs_and_points_that_have_not_finished(tmp_path: Path) -> None:
    write_sweep(tmp_path, "lr", [1.0, 2.0], ["adahessian"], [])
    write_point(tmp_path / "lr=1", {("adahessian", 0): [0.5, 0.8], ("adahessian", 1): [0.6]})
    write_point(tmp_path / "lr=2", {("adahessian", 0): [0.9]})
    cfg_path = tmp_path / "lr=2" / "config.json"  # its run is 1 epoch into 2
    cfg = json.loads(cfg_path.read_text())
    cfg["train"]["epochs"] = 2
    cfg_path.write_text(json.dumps(cfg))
    text = sweep.make_report(tmp_path)
    rows = table_rows(text)
    header = rows.pop("lr multiplier")
    assert list(rows) == ["1"]  # lr=2 has no finished run: no row, no sensitivity table
    # lr=1: seed 1's 1 epoch of 2 is no final accuracy; seed 0 alone counts.
    assert rows["1"][header.index("adahessian final")] == "80.00"
    assert "lr=1/adahessian-seed1 (1 of 2 epochs), lr=2/adahessian-seed0 (1 of 2 epochs)" in text
    assert "- No run finished yet (left out): lr=2." in text


def test_sweep_report_without_any_metrics_fails(tmp_path: Path) -> None:
    write_sweep(tmp_path, "lr", [1.0], ["adamw"], [])
    assert cli.main(["report", str(tmp_path)]) == 1


# ----------------------------------------------------------------------------- end to end


TINY = ["--max-steps", "2", "--epochs", "1", "--train-subset", "200", "--test-subset", "100",
        "--batch-size", "32", "--threads", "1", "--no-progress"]  # fmt: skip


def test_tiny_real_sweep_end_to_end(data_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "sweep"
    argv = ["sweep", "fmnist-resnet20", "--param", "update_interval", "--values", "1,2",
            "--optimizers", "adahessian,adamw", *TINY, "--out", str(out)]  # fmt: skip
    assert cli.main(argv) == 0
    desc = json.loads((out / "sweep.json").read_text())
    assert desc["param"] == "update_interval" and desc["values"] == [1, 2]
    assert desc["reference"] == ["adamw"]
    for v in [1, 2]:
        cfg = json.loads((out / f"update_interval={v}" / "config.json").read_text())
        assert cfg["optimizers"]["adahessian"]["update_interval"] == v
        assert list(cfg["optimizers"]) == ["adahessian"]
        metrics = (out / f"update_interval={v}" / "adahessian-seed0" / "metrics.jsonl").read_text()
        assert [json.loads(line)["step"] for line in metrics.splitlines()] == [2]
    assert (out / "reference" / "adamw-seed0" / "metrics.jsonl").is_file()

    # Resuming a finished sweep trains nothing more and leaves the metrics as they were.
    before = (out / "update_interval=2" / "adahessian-seed0" / "metrics.jsonl").read_text()
    assert cli.main([*argv, "--resume"]) == 0
    assert (out / "update_interval=2" / "adahessian-seed0" / "metrics.jsonl").read_text() == before
    # ... but not with another grid.
    other = [a if a != "1,2" else "1,5" for a in argv]
    assert cli.main([*other, "--resume"]) == 2

    assert cli.main(["report", str(out)]) == 0
    rows = table_rows((out / "report.md").read_text())
    assert list(rows) == [
        "update_interval", "1", "2", "optimizer", "adahessian", "reference (profile settings)",
        "adamw",
    ]  # fmt: skip
    assert (out / "update_interval.png").is_file()
    # Each grid point is an ordinary run folder.
    assert cli.main(["report", str(out / "update_interval=1")]) == 0
    assert (out / "update_interval=1" / "report.md").is_file()


def test_sweep_report_leaves_non_finite_values_of_diverged_runs_out(tmp_path: Path) -> None:
    write_sweep(tmp_path, "update_interval", [1, 10], ["adahessian"], [])
    write_point(
        tmp_path / "update_interval=1", {("adahessian", 0): [0.8], ("adahessian", 1): [0.9]}
    )
    write_point(tmp_path / "update_interval=10", {("adahessian", 0): [0.6]})
    run = tmp_path / "update_interval=10" / "adahessian-seed1"
    run.mkdir()
    line = {"optimizer": "adahessian", "seed": 1, "epoch": 1, "test_acc": float("inf"),
            "wall_time_s": 3.0, "diverged": True}  # fmt: skip
    (run / "metrics.jsonl").write_text(json.dumps(line) + "\n")
    rows = table_rows(sweep.make_report(tmp_path))
    header = rows.pop("update_interval")
    assert rows["10"][header.index("adahessian final")] == "60.00 (1/2 diverged)"


def test_sweep_report_mean_leaves_diverged_runs_out(tmp_path: Path) -> None:
    write_sweep(tmp_path, "lr", [1.0], ["adahessian"], [])
    write_point(tmp_path / "lr=1", {("adahessian", 0): [0.6]})
    # Seed 1 diverged, with a finite (meaningless) test accuracy: not part of the mean.
    run = tmp_path / "lr=1" / "adahessian-seed1"
    run.mkdir()
    line = {"optimizer": "adahessian", "seed": 1, "epoch": 1, "test_acc": 0.1,
            "train_loss": None, "wall_time_s": 3.0, "diverged": True}  # fmt: skip
    (run / "metrics.jsonl").write_text(json.dumps(line) + "\n")
    rows = table_rows(sweep.make_report(tmp_path))
    header = rows.pop("lr multiplier")
    assert rows["1"][header.index("adahessian final")] == "60.00 (1/2 diverged)"
    assert rows["1"][header.index("adahessian best")] == "60.00 (1/2 diverged)"


def test_sweep_report_into_a_folder_it_cannot_write_prints_the_report(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    write_sweep(tmp_path, "lr", [1.0], ["adamw"], [])
    write_point(tmp_path / "lr=1", {("adamw", 0): [0.6]})

    def refuse(*args: object, **kwargs: object) -> None:
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", refuse)
    assert cli.main(["report", str(tmp_path)]) == 1
    captured = capsys.readouterr()
    assert "| 1 " in captured.out
    assert captured.err == (
        "adahessian-bench report: error: "
        f"the report could not be written into {tmp_path} (Read-only file system); "
        "the report is printed above\n"
    )
    assert not (tmp_path / "report.md").exists()


def test_a_tuning_chooses_by_the_final_validation_metric_never_the_test_metric() -> None:
    """Value 1 is best on test, value 2 on validation: the tuning takes 2."""

    def point(test: list[float], valid: list[float]) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {"optimizer": "adamw", "seed": s, "final": t, "valid_final": v, "diverged": False}
                for s, (t, v) in enumerate(zip(test, valid, strict=True))
            ]
        )

    per_point = [(1.0, point([0.90, 0.92], [0.80, 0.81])), (2.0, point([0.85, 0.86], [0.84, 0.82])),
                 (4.0, point([0.70, 0.71], [0.60, 0.62]))]  # fmt: skip
    (row,) = sweep.sensitivity(per_point, ["adamw"], True, ".3f", 1.0).to_dict("records")
    assert row["best value"] == "1" and row[sweep.CHOSEN] == "2 (validation 0.830)"
