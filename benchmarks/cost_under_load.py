"""Step costs under load that comes and goes: the CPU clock against the wall clock.

``adahessian-bench run`` times every optimizer's training step side by side before training
(``adahessian_bench.stepcost.measure``) and builds the report's time axis from those costs.
Interleaving puts steady load on every contender alike, but a burst lands on some contenders'
steps and not on others'. This script calibrates the same contenders several times in one
process: on the idle machine, then while worker processes alternate busy and idle spells of
random length (bursty load), then while they stay busy (steady load), then idle again. For each
calibration it prints every contender's cost on the CPU clock (what the harness uses on CPU: the
process's CPU time per torch thread, which time spent waiting for a core does not add to) and on
the wall clock, as a ratio to the first idle calibration's, and the ratio of each contender's
cost to Adam's.

Usage::

    python benchmarks/cost_under_load.py                     # fmnist-resnet20, ~10 minutes
    python benchmarks/cost_under_load.py --quick             # a smoke test (seconds)
    python benchmarks/cost_under_load.py --out docs/results/cost-under-load

The machine should be otherwise idle: the script makes the load it measures under.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import platform
import random
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from tabulate import tabulate

from adahessian_bench import config, environment, stepcost, train
from adahessian_bench.tasks import TASKS

CONTENDERS = ("sgd", "adam", "adahessian", "adahessian-lazy", "adahessian-fd", "adahessian-fd-lazy")
CONDITIONS = ("idle", "bursty", "steady", "idle again")


def burn(seed: int, bursty: bool, stop: Any) -> None:
    """A worker: busy loops, in spells of 0.2-1.5 s with idle spells of 0.2-1.5 s between them
    (``bursty``), or busy throughout; until ``stop`` is set."""
    rng = random.Random(seed)
    x = 0.0
    while not stop.is_set():
        end = time.perf_counter() + (rng.uniform(0.2, 1.5) if bursty else 0.5)
        while time.perf_counter() < end:
            x = (x + 1.0) * 0.999999
        if bursty:
            stop.wait(rng.uniform(0.2, 1.5))


def calibrate(
    cfg: dict[str, Any], dataset: Any, rounds: int, condition: str, workers: int
) -> dict[str, Any]:
    """``stepcost.measure`` under ``condition`` (its workers started before and stopped after)."""
    stop = mp.Event()
    procs = []
    if condition in ("bursty", "steady"):
        for i in range(workers):
            p = mp.Process(target=burn, args=(i, condition == "bursty", stop), daemon=True)
            p.start()
            procs.append(p)
        time.sleep(1.0)
    try:
        return stepcost.measure(cfg, dataset, rounds=rounds, warmup=2, progress=False)
    finally:
        stop.set()
        for p in procs:
            p.join()


def table(results: dict[str, dict[str, Any]], names: list[str]) -> pd.DataFrame:
    """Per condition, contender and clock: the cost relative to the first idle calibration's,
    and the ratio to Adam's cost in the same calibration."""
    base = results["idle"]["optimizers"]
    rows = []
    for condition, cost in results.items():
        opts = cost["optimizers"]
        for name in names:
            kinds = (
                ["hessian"] if opts[name]["plain_step_s"] == opts[name]["hessian_step_s"] else []
            )
            kinds = kinds or ["hessian", "plain"]  # a lazy AdaHessian: its two step kinds
            for kind in kinds:
                for clock, prefix in (("cpu", ""), ("wall", "wall_")):
                    key, adam = f"{prefix}{kind}_step_s", f"{prefix}hessian_step_s"
                    rows.append({
                        "condition": condition,
                        "optimizer": name if kind == "hessian" else f"{name} (plain step)",
                        "clock": clock,
                        "step (ms)": 1000 * opts[name][key],
                        "vs idle": opts[name][key] / base[name][key],
                        "x Adam": opts[name][key] / opts["adam"][adam],
                        "x Adam, idle": base[name][key] / base["adam"][adam],
                    })  # fmt: skip
    return pd.DataFrame(rows)


def verdict(df: pd.DataFrame, tolerance: float) -> dict[str, Any]:
    """The largest deviation from the idle calibration per clock under each load (of the cost,
    and of the ratio to Adam), and whether it is within ``tolerance``."""
    out: dict[str, Any] = {}
    for condition in ("bursty", "steady", "idle again"):
        for clock in ("cpu", "wall"):
            d = df[(df["condition"] == condition) & (df["clock"] == clock)]
            cost_dev = float((d["vs idle"] - 1).abs().max())
            ratio_dev = float((d["x Adam"] / d["x Adam, idle"] - 1).abs().max())
            out[f"{condition}/{clock}"] = {
                "max cost deviation": cost_dev,
                "max ratio-to-Adam deviation": ratio_dev,
                "within": cost_dev <= tolerance and ratio_dev <= tolerance,
            }
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="fmnist-resnet20")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--rounds", type=int, default=12, help="timed rounds per calibration")
    p.add_argument("--workers", type=int, default=4, help="load processes (default: 4)")
    p.add_argument("--tolerance", type=float, default=0.10)
    p.add_argument("--quick", action="store_true", help="a tiny smoke run")
    p.add_argument("--out", default=None, help="write results.json and results.md here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    names = [n.strip() for n in args.contenders.split(",") if n.strip()]
    if "adam" not in names:
        names.insert(0, "adam")
    profile = config.load(args.task, "quick", None)
    if args.quick:
        profile["optimizers"].setdefault("sgd", {"lr": 0.1})
        names = [n for n in names if n in ("adam", "adahessian", "sgd")]
    missing = [n for n in names if n not in profile["optimizers"]]
    if missing:
        sys.exit(f"the {args.task} quick profile has no {', '.join(missing)}")
    cfg = train.resolve(args.task, profile, "quick", names, 1,
                        train_subset=500 if args.quick else None,
                        test_subset=100 if args.quick else None, device="cpu")  # fmt: skip
    cfg["train"]["epochs"] = max(cfg["train"]["epochs"], 10)  # so that no round is cut off
    dataset = TASKS[args.task].load(cfg)
    rounds = 1 if args.quick else args.rounds
    conditions = ("idle", "bursty") if args.quick else CONDITIONS
    results: dict[str, dict[str, Any]] = {}
    for condition in conditions:
        t0 = time.perf_counter()
        results[condition] = calibrate(cfg, dataset, rounds, condition, args.workers)
        print(f"{condition}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    df = table(results, names)
    judged = verdict(df, args.tolerance) if not args.quick else {}
    text = tabulate(df, headers="keys", tablefmt="github", showindex=False, floatfmt=".3f")
    meta = {
        "task": args.task,
        "cpu": environment.cpu_model(),
        "torch": torch.__version__,
        "threads": 1,
        "workers": args.workers,
        "rounds": rounds,
        "date": datetime.date.today().isoformat(),
        "python": platform.python_version(),
    }
    lines = [f"# Step costs under load: {args.task}", "",
             f"Machine: {meta['cpu']}, torch {meta['torch']}, 1 torch thread; {args.workers} load "
             f"processes; {rounds} timed rounds per calibration. Each row's `vs idle` is its cost "
             "over the first idle calibration's; `x Adam` the ratio to Adam's cost in the same "
             "calibration.", "", text, ""]  # fmt: skip
    for key, v in judged.items():
        lines.append(
            f"- {key}: the cost moved by at most {100 * v['max cost deviation']:.1f} %, the "
            f"ratio to Adam by at most {100 * v['max ratio-to-Adam deviation']:.1f} % "
            f"({'within' if v['within'] else 'outside'} {100 * args.tolerance:.0f} %)"
        )
    report = "\n".join(lines) + "\n"
    print(report)
    summary = {"meta": meta, "verdict": judged, "rows": df.to_dict(orient="records"),
               "calibrations": results}  # fmt: skip
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
        (out / "results.md").write_text(report)
    return summary


if __name__ == "__main__":
    main()
