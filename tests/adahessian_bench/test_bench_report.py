"""The report on synthetic metrics: mean ± std over seeds, relative step time, time to target."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image

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
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in text.splitlines()
        if line.startswith("| ")
    }
    header = rows.pop("optimizer")
    assert list(rows) == ["adam", "adahessian"]  # the config's order
    col = {name: header.index(name) for name in header}
    adam, ah = rows["adam"], rows["adahessian"]
    assert adam[col["seeds"]] == "2"
    assert adam[col["best test accuracy (%)"]] == "75.00 ± 7.07"  # best 70 and 80
    assert adam[col["final test accuracy (%)"]] == "70.00 ± 14.14"  # final 60 and 80
    assert ah[col["best test accuracy (%)"]] == "90.00 ± 0.00"
    assert adam[col["step time vs adam"]] == "1.00x"
    assert ah[col["step time vs adam"]] == "3.00x"
    assert ah[col["ms / step"]] == "300 ± 0"
    # Target 80%: adahessian at epoch 2 (20 s) and epoch 1 (10 s); adam only seed 1, at 30 s.
    assert ah[col["time to 80% (s)"]] == "15 ± 7"
    assert adam[col["time to 80% (s)"]] == "30 (1/2 reached)"
    assert make_report(tmp_path, target=0.95).count("not reached") == 2
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
    rows = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in text.splitlines()
        if line.startswith("| ")
    }
    header = rows.pop("optimizer")
    col = {name: header.index(name) for name in header}
    assert rows["adamw"][col["best test perplexity"]] == "160.0"  # the lowest, not the highest
    assert rows["adahessian"][col["best test perplexity"]] == "120.0"
    assert rows["adamw"][col["final test perplexity"]] == "170.0"
    assert rows["adahessian"][col["final valid_ppl"]] == "121.0000"
    # The test value at the epoch with the best validation value (no peeking at the test set).
    assert rows["adamw"][col["test perplexity at best valid epoch"]] == "300.0"
    assert rows["adahessian"][col["test perplexity at best valid epoch"]] == "120.0"
    # Without adam in the run, step times are relative to the first optimizer of the config.
    assert rows["adahessian"][col["step time vs adamw"]] == "1.00x"
    # Target 150 (lower is better): adahessian at epoch 2 (20 s); adamw never.
    assert rows["adahessian"][col["time to 150 (s)"]] == "20"
    assert rows["adamw"][col["time to 150 (s)"]] == "not reached"
    assert "inverse_sqrt lr schedule, 100 warm-up steps" in text
    for name in plot_names("test_ppl"):
        assert matplotlib.image.imread(tmp_path / name).ndim == 3
