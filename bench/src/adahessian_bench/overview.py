"""Over tasks: the cross-task summary of run folders (``adahessian-bench summary``), and the step
and time speedups of each AdaHessian against budget runs of the task's baseline."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from . import config, optimizers
from .compare import baseline_of, paired, paper_claim, per_run, reach, steps_needed, within
from .hints import did_you_mean
from .report import _mean_std, summary
from .results import (
    ACCURACY,
    PUBLISHED,
    Folder,
    _number,
    folder,
    read_config,
    read_json,
    read_runs,
    time_basis,
    with_time,
)


def _fmt(value: float, metric: dict[str, Any], sign: bool = False) -> str:
    return format(metric["scale"] * value, ("+" if sign else "") + metric["fmt"])


def _verdict(p: dict[str, float], higher: bool) -> str:
    if not np.isfinite(p["low"]):
        return "one seed: no verdict"
    if p["low"] > 0 or p["high"] < 0:
        better = (p["low"] > 0) == higher
        return "AdaHessian better" if better else "AdaHessian worse"
    return "tie (the interval holds 0)"


def overview_rows(out: Path | Folder) -> list[dict[str, str]]:
    """The rows of the cross-task summary for one run folder: one per AdaHessian of the run, set
    against the paper's baseline for the task (``paper_claim``; else the best first-order
    optimizer), per epoch (final metric, paired by seed) and per unit of time (time to the
    first-order target, and the metric within the fastest first-order optimizer's time)."""
    cfg = read_config(out)
    df, _, _ = read_runs(out, cfg)
    df = with_time(df, cfg, time_basis(df, out)[0])
    metric = cfg.get("metric", ACCURACY)
    higher = metric["higher_is_better"]
    present = set(df["optimizer"])  # in config.json's order, then any it does not name
    order = [o for o in cfg["optimizers"] if o in present]
    order += sorted(present - set(order))
    _, judged = summary(df, None, order, order[0], metric, cfg["task"])
    runs, target = judged["runs"], judged["target"]
    claim = paper_claim(cfg["task"])
    base = baseline_of(cfg["task"], order, judged["source"])
    if base is None or base not in order:
        return []

    def final(opt: str) -> str:
        return _mean_std(runs.loc[runs["optimizer"] == opt, "final"], metric["fmt"],
                         metric["scale"])  # fmt: skip

    def time_to(opt: str) -> float:
        """The median over seeds of the time to target, a seed that never reached it counted
        as infinitely late (AlgoPerf's rule): finite if more than half the seeds reached it."""
        r = runs[runs["optimizer"] == opt]
        times = [reach(run, target, higher, metric["key"])["time"] for _, run in r.iterrows()]
        times = [t if np.isfinite(t) else np.inf for t in times]
        return float(np.median(times)) if times else np.nan

    rows = []
    base_time = time_to(base)
    for opt in [o for o in order if not optimizers.first_order(o)]:
        p = paired(runs, opt, base)
        interval = (
            f" [{_fmt(p['low'], metric, True)}, {_fmt(p['high'], metric, True)}]"
            if np.isfinite(p["low"])
            else ""
        )
        t = time_to(opt)
        if np.isfinite(t) and np.isfinite(base_time) and base_time > 0:
            ratio = f"{t / base_time:.2f}x {base}'s ({t:.0f} s vs {base_time:.0f} s)"
        elif np.isfinite(base_time):
            ratio = f"not reached by most seeds ({base}: {base_time:.0f} s)"
        elif np.isfinite(t):
            ratio = f"{t:.0f} s; {base} did not reach it in most seeds"
        else:
            ratio = "neither reached it in most seeds"
        r = runs[runs["optimizer"] == opt]
        budget = judged["budget"]
        in_budget = pd.Series([within(run, budget, metric["key"]) for _, run in r.iterrows()],
                              dtype=float)  # fmt: skip
        rows.append(
            {
                "task": cfg["task"],
                "metric": metric["label"] + (" ↑" if higher else " ↓"),
                "AdaHessian": opt,
                "final": final(opt),
                "baseline": f"{base} {final(base)}",
                "paired difference [95 %]": (
                    f"{_fmt(p['mean'], metric, True)}{interval}" if p["n"] else "n/a"
                ),
                "per epoch": _verdict(p, higher),
                "time to target": ratio,
                "within the fastest first-order time": (
                    f"{_mean_std(in_budget, metric['fmt'], metric['scale'])} "
                    f"({judged['fastest']}'s {budget:.0f} s)"
                    if np.isfinite(budget) and in_budget.notna().any()
                    else f"no epoch ended within {judged['fastest']}'s {budget:.0f} s"
                    if np.isfinite(budget)
                    else "n/a"
                ),
                "seeds": str(p["n"]),
                "paper's claim": claim[1] if claim else "-",
            }
        )
    return rows


def budget_runs(paths: list[Path]) -> list[Folder]:
    """The run folders of ``[train] budget`` runs that ``paths`` name: a run folder itself, or
    every point of a budget sweep's folder (as the harness writes it, or published)."""
    out: list[Folder] = []
    for path in map(Path, paths):
        if not (path / "sweep.json").is_file():  # sweep.SWEEP_FILE
            out.append(folder(path))
            continue
        sweep_cfg = read_json(path / "sweep.json")
        if not isinstance(sweep_cfg, dict) or sweep_cfg.get("param") != "budget":
            raise ValueError(f"{path} is not a sweep of the step budget (--param budget)")
        for p in sweep_cfg.get("points", []):
            if not isinstance(p, dict) or not isinstance(p.get("dir"), str):
                raise ValueError(f"{path / 'sweep.json'} is damaged: make it again (rerun)")
            if (path / p["dir"]).is_dir():
                out.append(folder(path / p["dir"]))
            elif (path / PUBLISHED / "config.json").is_file() and _number(p.get("value")):
                prefix = p["dir"].replace("=", "-") + "_"  # as sweep.publish names the files
                out.append(Folder(path, path / PUBLISHED, prefix, p["value"]))  # int stays int
    return out


def overview(
    folders: list[Path],
    budgets: list[Path] | None = None,
    only: list[str] | None = None,
    columns: list[str] | None = None,
) -> str:
    """The cross-task summary table (Markdown) of run folders (``adahessian-bench summary``);
    with ``budgets`` (budget runs or budget sweeps of the tasks' baselines), the step and time
    speedups of each AdaHessian (``step_speedup``). ``only``: only the rows of these
    AdaHessians; ``columns``: only these columns, in this order (a README's headline table).
    ValueError naming an optimizer or a column the table does not have."""
    seen: dict[Path, Path] = {}
    for out in map(Path, folders):
        if (out / "sweep.json").is_file():  # sweep.SWEEP_FILE
            raise ValueError(
                f"{out} is a sweep folder: summary sets run folders side by side; "
                f"`adahessian-bench report {out}` reports a sweep"
            )
        if out.resolve() in seen:
            raise ValueError(f"{seen[out.resolve()]} and {out} are the same folder: name it once")
        seen[out.resolve()] = out
    rows = [row for out in folders for row in overview_rows(Path(out))]
    if not rows:
        raise ValueError("no folder holds an AdaHessian run beside a first-order baseline")
    if budgets:
        by_task: dict[str, list[Folder]] = {}
        for d in budget_runs(budgets):
            by_task.setdefault(read_config(d)["task"], []).append(d)
        speedups: dict[tuple[str, str], tuple[str, str]] = {}
        for out in map(Path, folders):
            task = read_config(out)["task"]
            for r in step_speedup(out, by_task[task]).to_dict("records") if task in by_task else []:
                speedups[(task, r["AdaHessian"])] = (r["step speedup"], r["time speedup"])
        for row in rows:
            row["step speedup"], row["time speedup"] = speedups.get(
                (row["task"], row["AdaHessian"]), ("-", "-")
            )
    return tabulate(_select(rows, only, columns), headers="keys", tablefmt="github",
                    showindex=False, disable_numparse=True)  # fmt: skip


def _select(
    rows: list[dict[str, str]], only: list[str] | None, columns: list[str] | None
) -> pd.DataFrame:
    """The rows of the AdaHessians ``only`` and the ``columns`` of the summary table (all if
    None)."""
    table = pd.DataFrame(rows)
    present = list(dict.fromkeys(table["AdaHessian"]))
    for name in only or []:
        if name not in present:
            raise ValueError(
                f"--optimizers {name}: no row of the summary is of it{did_you_mean(name, present)}"
                f"; the AdaHessians here: {', '.join(present)}"
            )
    for name in columns or []:
        if name not in table.columns:
            raise ValueError(
                f"--columns {name!r}: the summary has no such column"
                f"{did_you_mean(name, table.columns)}; its columns: {', '.join(table.columns)}"
            )
    if only:
        table = table[table["AdaHessian"].isin(only)]
    return table[columns] if columns else table


# ----------------------------------------------------------------------------- step speedup


Finals = dict[str, dict[int, tuple[float, float, int, float]]]
Curves = dict[str, dict[int, list[tuple[int, float]]]]


def _finals(out: Path | Folder) -> tuple[dict[str, Any], Finals, Curves]:
    """The config.json of the run folder ``out``; per optimizer and seed its final judged
    (validation) metric, final test metric, steps and time (on the folder's time axis); and per
    optimizer and seed its judged metric at every evaluation, as (steps, metric) by steps."""
    cfg = read_config(out)
    df, _, _ = read_runs(out, cfg)
    df = with_time(df, cfg, time_basis(df, out)[0])
    finals: Finals = {}
    curves: Curves = {}
    for _, row in per_run(df, cfg.get("metric", ACCURACY)).iterrows():
        opt, seed = str(row["optimizer"]), int(row["seed"])
        finals.setdefault(opt, {})[seed] = (
            float(row["judged_final"]), float(row["final"]), int(row["steps"]), float(row["time"])
        )  # fmt: skip
        curve = row["curve"].dropna(subset=[row["judged"]]).sort_values("step")
        curves.setdefault(opt, {})[seed] = [
            (int(s), float(m)) for s, m in zip(curve["step"], curve[row["judged"]], strict=True)
        ]
    return cfg, finals, curves


def _speedup_cell(values: list[float], at_once: int, largest: float) -> str:
    """Median [range] over seeds; "not reached" if most seeds never reached it within the
    ``largest`` budget; "≤" if in most seeds the baseline's own budget already reached it."""
    if sum(np.isinf(values)) * 2 >= len(values) and len(values):
        return f"not reached within {largest:g}x the baseline's steps"
    med, low, high = (float(np.median(values)), min(values), max(values))
    top = f"{high:.2f}" if np.isfinite(high) else "not reached"
    spread = f" [{low:.2f}, {top}]" if len(values) > 1 else ""
    prefix = "≤ " if at_once * 2 > len(values) else ""  # the baseline needed no more
    return f"{prefix}{med:.2f}x{spread}"


def step_speedup(
    run_dir: Path | Folder, budget_dirs: list[Folder] | list[Path], base: str | None = None
) -> pd.DataFrame:
    """How many steps (and seconds) the first-order baseline needs to reach each AdaHessian's
    final validation metric, against the AdaHessian's own: per AdaHessian of ``run_dir``, the
    baseline of the task (``base``, default the paper's) trained at budget 1 there and at larger
    budgets in ``budget_dirs`` (run folders of ``[train] budget`` B, e.g. a budget sweep's
    points). Per seed, the baseline's final validation metric over its budgets is interpolated
    linearly to the AdaHessian's median final validation metric; the speedup is those steps over
    the AdaHessian's steps (and, on the step costs of ``run_dir``, the baseline's time for them
    over the AdaHessian's time). Median and range over seeds; "not reached" beyond the largest
    budget.

    Where the schedule has no horizon (``config.HORIZONLESS``: the lr at a step does not depend
    on the run's length), a longer run passes through every shorter budget, so each of the
    baseline's evaluations counts as the final metric of a budget that ends there: the steps are
    read at the evaluations' resolution (the budgets column says "every evaluation")."""
    cfg, main, main_curves = _finals(run_dir)
    metric = cfg.get("metric", ACCURACY)
    higher = metric["higher_is_better"]
    present = list(cfg["optimizers"])
    base = base or baseline_of(cfg["task"], present, None)
    if base is None or base not in present:
        raise ValueError(f"{run_dir} holds no run of the task's baseline ({base or 'none'})")
    schedule = config.schedule_of(cfg["train"])
    horizonless = schedule in config.HORIZONLESS
    per_budget = {1.0: main.get(base, {})}
    curves = [main_curves.get(base, {})]
    for d in budget_dirs:
        bcfg, finals, budget_curves = _finals(d)
        if bcfg["task"] != cfg["task"]:
            raise ValueError(f"{d} is a run of {bcfg['task']}, not of {cfg['task']}")
        if config.schedule_of(bcfg["train"]) != schedule:
            raise ValueError(f"{d} has another lr schedule than {run_dir}: not a budget of it")
        per_budget[float(bcfg["train"].get("budget", 1))] = finals.get(base, {})
        curves.append(budget_curves.get(base, {}))
    cost, _ = time_basis(pd.DataFrame({"optimizer": present}), run_dir)
    base_step_s = cost[base]["hessian_step_s"] if base in cost else math.nan
    largest = max(per_budget)

    # Per seed, the baseline's (steps, final validation metric) of each budget ending there.
    points: dict[int, list[tuple[int, float]]] = {}
    for seed in sorted(per_budget[1.0]):
        if horizonless:  # every evaluation; the same step in two runs: the same run so far
            at: dict[int, float] = {}
            for c in curves:
                at.update(c.get(seed, []))
            points[seed] = sorted(at.items())
        else:
            ends = [v[seed] for v in per_budget.values() if seed in v]
            points[seed] = sorted((steps, valid) for valid, _, steps, _ in ends)
    budgets = ", ".join(f"{b:g}" for b in sorted(per_budget))
    if horizonless:
        budgets += " (every evaluation)"

    rows = []
    for opt in [o for o in present if not optimizers.first_order(o)]:
        ours = main.get(opt, {})
        if not ours:
            continue
        target = float(np.median([v[0] for v in ours.values()]))
        our_steps = float(np.median([v[2] for v in ours.values()]))
        our_time = float(np.median([v[3] for v in ours.values()]))
        speed, time_speed, at_once = [], [], 0
        for seed_points in points.values():
            needed = steps_needed(seed_points, target, higher)
            at_once += needed == seed_points[0][0]  # reached at the first point: maybe before
            needed = needed if np.isfinite(needed) else math.inf  # not within the largest budget
            speed.append(needed / our_steps)
            time_speed.append(needed * base_step_s / our_time)

        rows.append({
            "task": cfg["task"], "AdaHessian": opt, "baseline": base,
            f"AdaHessian's final {metric['label']} (validation)": _fmt(target, metric),
            "budgets": budgets,
            "step speedup": _speedup_cell(speed, at_once, largest),
            "time speedup": (
                _speedup_cell(time_speed, at_once, largest) if np.isfinite(base_step_s) else "n/a"
            ),
            "seeds": str(len(speed)),
        })  # fmt: skip
    return pd.DataFrame(rows)
