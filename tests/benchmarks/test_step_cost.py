"""Smoke test of the step-cost harness on tiny sizes: behaviour and output structure only."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "step_cost.py"


@pytest.fixture(scope="module")
def step_cost() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("step_cost", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["step_cost"] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    yield module
    torch.set_num_threads(threads)  # main() sets the thread count; leave other tests alone
    del sys.modules["step_cost"]


def test_quick_run_writes_the_table_and_json(step_cost: ModuleType, tmp_path: Path) -> None:
    out, md = tmp_path / "out.json", tmp_path / "out.md"
    chosen = ["sgd", "adahessian", "adahessian-int10", "adahessian-fwd", "adahessian-fastbn"]
    argv = ["--quick", "--no-memory", "--rounds", "1", "--warmup", "0"]
    argv += ["--contenders", ",".join(chosen), "--json", str(out), "--markdown", str(md)]
    step_cost.main(argv)
    report = json.loads(out.read_text())
    meta = report["meta"]
    assert meta["quick"] is True and meta["rounds"] == 1 and meta["memory"] is False
    assert {"torch", "cpu", "threads", "date"} <= set(meta)
    assert list(report["models"]) == ["resnet20", "transformer", "embedding"]
    for name, task in report["models"].items():
        assert task["parameters"] > 0 and task["description"]
        results = task["results"]
        assert list(results) == ["adam", *chosen]  # Adam is always run: the reference
        assert results["adam"]["relative_to_adam"] == pytest.approx(1.0)
        assert results["adahessian-int10"]["cycle"] == 10
        for contender, entry in results.items():
            if contender == "adahessian-fastbn" and name != "resnet20":
                assert entry["status"].startswith("skipped")
                assert entry["median_step_s"] is None
                continue
            assert entry["status"] == "ok", (name, contender, entry["status"])
            assert len(entry["times_s"]) == 1
            assert entry["median_step_s"] > 0 and entry["relative_to_adam"] > 0
            assert entry["peak_above_baseline_mib"] is None
    table = md.read_text()
    assert table.count("### ") == 3
    assert "| AdaHessian, forward-over-reverse | forward-over-reverse | 1 |" in table


def test_memory_is_measured_in_a_subprocess(step_cost: ModuleType) -> None:
    result = step_cost.measure_memory("embedding", "adam", quick=True)
    assert "error" not in result, result
    assert result["peak_above_baseline_mib"] >= 0
    assert isinstance(result["peak_reset"], bool)
    assert "plain_step_peak_above_baseline_mib" not in result  # one kind of step only


def test_update_interval_contenders_report_the_plain_steps_memory_apart(
    step_cost: ModuleType,
) -> None:
    result = step_cost.measure_memory("resnet20", "adahessian-int10", quick=True)
    assert "error" not in result, result
    plain = result["plain_step_peak_above_baseline_mib"]
    assert 0 <= plain <= result["peak_above_baseline_mib"]


def test_memory_phases_quick_run(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location(
        "memory_phases", SCRIPT.with_name("memory_phases.py")
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        rows = module.main(["--quick", "--rounds", "1"])
    finally:
        torch.set_num_threads(threads)
    assert [r["optimizer"] for r in rows] == ["adam", "adahessian"]
    for r in rows:
        assert r["peak through step"] >= r["peak through backward"] >= 0
    assert "| adahessian |" in capsys.readouterr().out


def test_unknown_names_are_refused(step_cost: ModuleType) -> None:
    with pytest.raises(SystemExit):
        step_cost.main(["--quick", "--contenders", "nope"])
    with pytest.raises(SystemExit):
        step_cost.main(["--quick", "--models", "nope"])


def test_compiled_contenders_report_their_compile_time_apart(
    step_cost: ModuleType, tmp_path: Path
) -> None:
    # --quick compiles with the aot_eager backend: the same graph, no code generation.
    out = tmp_path / "out.json"
    chosen = ["adahessian-compiled", "adahessian-compiled-int10"]
    argv = ["--quick", "--no-memory", "--rounds", "1", "--warmup", "1", "--models", "resnet20"]
    step_cost.main([*argv, "--contenders", ",".join(chosen), "--json", str(out)])
    results = json.loads(out.read_text())["models"]["resnet20"]["results"]
    assert list(results) == ["adam", *chosen]
    for name in chosen:
        entry = results[name]
        assert entry["status"] == "ok", entry["status"]
        assert entry["backend"] == "aot_eager"
        assert entry["compiles"] == 1 and entry["compile_s"] > 0  # during the warm-up round
        assert len(entry["times_s"]) == 1 and entry["relative_to_adam"] > 0
    assert results["adahessian-compiled-int10"]["cycle"] == 10


def test_compiled_memory_is_measured_after_compiling(step_cost: ModuleType) -> None:
    result = step_cost.measure_memory("resnet20", "adahessian-compiled-int10", quick=True)
    assert "error" not in result, result
    assert result["warmed_up"] is True
    assert 0 <= result["plain_step_peak_above_baseline_mib"] <= result["peak_above_baseline_mib"]


def test_finite_difference_contenders_quick_run(step_cost: ModuleType, tmp_path: Path) -> None:
    out, md = tmp_path / "out.json", tmp_path / "out.md"
    chosen = ["adahessian-fd", "adahessian-fd-int10"]
    argv = ["--quick", "--no-memory", "--rounds", "1", "--warmup", "0"]
    step_cost.main(
        [*argv, "--contenders", ",".join(chosen), "--json", str(out), "--markdown", str(md)]
    )
    report = json.loads(out.read_text())
    assert list(report["models"]) == ["resnet20", "transformer", "embedding"]
    for name, task in report["models"].items():
        results = task["results"]
        assert list(results) == ["adam", *chosen]  # no compiled reference without a compiled one
        for contender in chosen:
            entry = results[contender]
            assert entry["status"] == "ok", (name, contender, entry["status"])
            assert entry["hvp"] == "finite differences (forward)" and entry["n"] == 1
            assert len(entry["times_s"]) == 1
            assert entry["median_step_s"] > 0 and entry["relative_to_adam"] > 0
            assert "relative_to_adam_compiled" not in entry and "compile_s" not in entry
        # One round and no warm-up: one Hessian step (two forward+backward passes) for
        # adahessian-fd; one 10-step cycle (one Hessian step, nine plain) for the lazy one.
        assert results["adahessian-fd"]["steps"] == 1
        assert results["adahessian-fd"]["closure_calls"] == 2
        assert results["adahessian-fd-int10"]["cycle"] == 10
        assert results["adahessian-fd-int10"]["steps"] == 10
        assert results["adahessian-fd-int10"]["closure_calls"] == 11
    table = md.read_text()
    assert "| AdaHessian, finite differences | finite differences (forward) | 1 |" in table
    assert "| AdaHessian, finite differences, update_interval 10 | finite differences" in table


def _hessian_updates(opt: torch.optim.Optimizer) -> int:
    return int(opt.state_dict()["adahessian"]["hessian_updates"])


@pytest.mark.parametrize("task_name", ["resnet20", "transformer"])
def test_finite_difference_step_calls_the_closure_again_and_never_double_backward(
    step_cost: ModuleType, task_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    task = step_cost.make_task(task_name, quick=True)
    by_name = {c.name: c for c in step_cost.contenders()}
    create_graph: list[bool] = []
    backward = torch.Tensor.backward

    def spy(self: torch.Tensor, *args: object, **kwargs: object) -> None:
        create_graph.append(bool(kwargs.get("create_graph", False)))
        backward(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch.Tensor, "backward", spy)
    with task.context():
        step = by_name["adahessian-fd"].make(task)
        lazy = by_name["adahessian-fd-int10"].make(step_cost.make_task(task_name, quick=True))
        opt = step.optimizer
        assert opt.hvp == "finite-difference"
        before = [p.detach().clone() for p in task.model.parameters()]
        for k in range(1, 3):
            step()
            assert step.counts == {"steps": k, "closure_calls": 2 * k}  # θ, then θ + εv
            assert _hessian_updates(opt) == k
        assert any(
            not torch.equal(b, p) for b, p in zip(before, task.model.parameters(), strict=True)
        )
        for k in range(1, 12):  # Hessian steps 1 and 11: one extra pass each
            lazy()
            assert lazy.counts["closure_calls"] == k + (1 if k < 11 else 2)
        assert _hessian_updates(lazy.optimizer) == 2
    assert create_graph and not any(create_graph)  # ordinary backward passes only


def test_compiled_finite_difference_contender_is_compared_with_compiled_adam(
    step_cost: ModuleType, tmp_path: Path
) -> None:
    # --quick compiles with the aot_eager backend; adam-compiled is added as the reference.
    out, md = tmp_path / "out.json", tmp_path / "out.md"
    argv = ["--quick", "--no-memory", "--rounds", "1", "--warmup", "1", "--models", "resnet20"]
    argv += ["--contenders", "adahessian-fd-compiled", "--json", str(out), "--markdown", str(md)]
    step_cost.main(argv)
    results = json.loads(out.read_text())["models"]["resnet20"]["results"]
    assert list(results) == ["adam", "adam-compiled", "adahessian-fd-compiled"]
    entry = results["adahessian-fd-compiled"]
    assert entry["status"] == "ok", entry["status"]
    assert entry["backend"] == "aot_eager"
    assert entry["steps"] == 2 and entry["closure_calls"] == 4
    assert len(entry["times_s"]) == 1
    assert entry["relative_to_adam"] > 0 and entry["relative_to_adam_compiled"] > 0
    assert entry["relative_to_adam_compiled"] == pytest.approx(
        entry["median_step_s"] / results["adam-compiled"]["median_step_s"]
    )
    # Each compiles in its first (warm-up) step and never after: Adam the plain graph, the
    # finite-difference contender the graphs that record and replay the activation pattern.
    assert results["adam-compiled"]["compiles"] == 1 and entry["compiles"] == 1
    assert "relative_to_adam_compiled" not in results["adam-compiled"]
    assert "step time / compiled Adam" in md.read_text()


def test_finite_difference_memory_is_measured_in_a_subprocess(step_cost: ModuleType) -> None:
    result = step_cost.measure_memory("resnet20", "adahessian-fd-int10", quick=True)
    assert "error" not in result, result
    assert 0 <= result["plain_step_peak_above_baseline_mib"] <= result["peak_above_baseline_mib"]


def test_cost_under_load_quick_run_writes_both_clocks(tmp_path: Path) -> None:
    """The bursty-load calibration script, on a tiny setting: every contender is timed on the CPU
    clock and the wall clock under each condition, and the files are written."""
    from adahessian_bench import data, data_images

    try:  # the data it times on, fetched as `adahessian-bench data fetch fashion-mnist` does
        data_images.fetch_fashion_mnist(verbose=False)
    except data.DataUnavailable as e:
        pytest.fail(f"Fashion-MNIST could not be fetched:\n{e}", pytrace=False)
    spec = importlib.util.spec_from_file_location("cost_under_load", SCRIPT.with_name(
        "cost_under_load.py"))  # fmt: skip
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    try:
        summary = module.main(["--quick", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    rows = summary["rows"]
    assert {(r["condition"], r["clock"]) for r in rows} == {
        (c, k) for c in ("idle", "bursty") for k in ("cpu", "wall")
    }
    assert all(r["step (ms)"] > 0 for r in rows)
    assert all(r["x Adam"] == 1.0 for r in rows if r["optimizer"] == "adam")
    assert json.loads((tmp_path / "results.json").read_text())["meta"]["threads"] == 1
    assert "| condition" in (tmp_path / "results.md").read_text()
