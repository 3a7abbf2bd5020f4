"""Report: a Markdown table over optimizers (mean ± std over seeds) and metric plots (PNG).

A folder the report cannot be written into still gets its report, printed (``NotWritten``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from tabulate import tabulate

from . import config, optimizers, steptime
from .compare import (
    baseline_of,
    baseline_target,
    first_order_names,
    paired,
    paper_claim,
    per_run,
    reach,
    within,
)
from .data import atomic_write_bytes, atomic_write_text
from .results import (
    ACCURACY,
    folder,
    notes,
    read_config,
    read_env,
    read_json_or_none,
    read_runs,
    reported_runs,
    time_basis,
    with_time,
)


def plot_names(metric_key: str = "test_acc") -> tuple[str, str]:
    """The two plots of a report: the metric against epochs and against training time."""
    return f"{metric_key}_vs_epoch.png", f"{metric_key}_vs_time.png"


PLOTS = plot_names()


class NotWritten(OSError):
    """The report could not be written into its folder (read-only ...); ``text`` holds it."""

    def __init__(self, out: Path, error: OSError, text: str) -> None:
        super().__init__(f"the report could not be written into {out} ({error.strerror or error})")
        self.text = text


def _mean_std(values: pd.Series, fmt: str, scale: float = 1.0) -> str:
    v = values.dropna().to_numpy(dtype=float) * scale
    if len(v) == 0:
        return "n/a"
    if len(v) == 1:
        return format(v[0], fmt)
    return f"{format(v.mean(), fmt)} ± {format(v.std(ddof=1), fmt)}"


def _unit(metric: dict[str, Any]) -> str:
    return "%" if metric["scale"] == 100 else ""


def summary(
    df: pd.DataFrame,
    target: float | None,
    order: list[str],
    reference: str = "adam",
    metric: dict[str, Any] | None = None,
    task: str | None = None,
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """One row per optimizer: the metric (best and final epoch, mean ± std over seeds), the other
    metrics the task names, the cost of a step (measured side by side) absolute and relative to
    ``reference``, steps and time to the target with the test metric there, the metric within the
    fastest first-order optimizer's time, wall-clock training time and peak memory. ``df`` has
    ``time_s`` (``with_time``). ``target`` None: the median final validation metric of the
    paper's baseline for ``task``, else of the best first-order optimizer (``baseline_target``).
    Also returns what the table was judged by: target, its source, the time budget and the
    per-run frame."""
    m = metric or ACCURACY
    key, higher = m["key"], m["higher_is_better"]
    runs = per_run(df, m)
    source = "given"
    if target is None:
        found = baseline_target(runs, higher, task)
        target, source = found if found else (np.nan, "none")
    fo = first_order_names(o for o in order if o in set(runs["optimizer"]))
    budgets = {o: runs.loc[runs["optimizer"] == o, "time"].median() for o in fo}
    fastest = min(budgets, key=lambda o: budgets[o]) if budgets else None
    budget = budgets[fastest] if fastest else np.nan
    ms = runs["step_s"]
    ref_ms = ms[runs["optimizer"] == reference].mean()
    scale, fmt = m["scale"], m["fmt"]
    shown_target = f"{format(scale * target, fmt)}{_unit(m)}" if np.isfinite(target) else "target"
    rows = []
    for opt in [o for o in order if o in set(runs["optimizer"])]:
        r = runs[runs["optimizer"] == opt]
        hits = pd.DataFrame([reach(run, target, higher, key) for _, run in r.iterrows()])
        n_reached = int(hits["time"].notna().sum())

        def of_reached(
            col: str, f: str, sc: float = 1.0, hits: pd.DataFrame = hits, n: int = n_reached
        ) -> str:
            text = _mean_std(hits[col], f, sc)
            if n < len(hits):
                return f"{text} ({n}/{len(hits)} reached)" if n else "not reached"
            return text

        extra = {
            f"final {k}": _mean_std(r[f"extra:{k}"], ".4f") for k in m["extra"] if f"extra:{k}" in r
        }
        if r["at_best_valid"].notna().any():
            extra = {f"{m['label']} at best valid epoch": _mean_std(r["at_best_valid"], fmt, scale),
                     **extra}  # fmt: skip
        rel = ms[r.index].mean() / ref_ms if np.isfinite(ref_ms) and ref_ms > 0 else np.nan
        in_budget = pd.Series([within(run, budget, key) for _, run in r.iterrows()], dtype=float)
        rows.append(
            {
                "optimizer": opt + (" (diverged)" if r["diverged"].any() else ""),
                "seeds": len(r),
                f"best {m['label']}": _mean_std(r["best"], fmt, scale),
                f"final {m['label']}": _mean_std(r["final"], fmt, scale),
                **extra,
                "ms / step": _mean_std(ms[r.index], ".0f", 1000),
                f"step cost vs {reference}": "n/a" if not np.isfinite(rel) else f"{rel:.2f}x",
                f"steps to {shown_target}": of_reached("steps", ".0f"),
                f"time to {shown_target} (s)": of_reached("time", ".0f"),
                f"{m['label']} there": of_reached("test", fmt, scale),
                **(
                    {f"{m['label']} within {budget:.0f} s": _mean_std(in_budget, fmt, scale)}
                    if np.isfinite(budget)
                    else {}
                ),
                "training time (s)": _mean_std(r["time"], ".0f"),
                "wall clock (s)": _mean_std(r["wall"], ".0f"),
                "peak memory (MiB)": _mean_std(r["peak_mem"], ".0f"),
            }
        )
    judged = {"target": target, "source": source, "budget": budget, "fastest": fastest,
              "runs": runs}  # fmt: skip
    return pd.DataFrame(rows), judged


def _curves(
    df: pd.DataFrame, opt: str, key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds of the metric per epoch, and the mean training time per epoch."""
    g = df[df["optimizer"] == opt]
    acc = g.pivot_table(index="epoch", columns="seed", values=key)
    tim = g.pivot_table(index="epoch", columns="seed", values="time_s")
    std = acc.std(axis=1, ddof=1).fillna(0.0) if acc.shape[1] > 1 else acc.iloc[:, 0] * 0
    return acc.index.to_numpy(), tim.mean(axis=1).to_numpy(), acc.mean(axis=1).to_numpy(), std


def plot(
    df: pd.DataFrame,
    out: Path,
    order: list[str],
    title: str,
    metric: dict[str, Any] | None = None,
    time_label: str = "training time (s)",
    target: float = math.nan,
) -> list[Path]:
    """The metric against epochs and against training time (``df``'s ``time_s``), the mean over
    seeds with ± 1 std shaded, and the target as a dotted line."""
    m = metric or ACCURACY
    names = plot_names(m["key"])
    scale = m["scale"]
    paths = []
    for name, xlabel in zip(names, ("epoch", time_label), strict=True):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        for opt in [o for o in order if o in set(df["optimizer"])]:
            epochs, times, mean, std = _curves(df, opt, m["key"])
            x = epochs if name == names[0] else times
            (line,) = ax.plot(x, scale * mean, marker="o", markersize=3, label=opt)
            ax.fill_between(
                x, scale * (mean - std), scale * (mean + std), color=line.get_color(), alpha=0.2
            )
        if math.isfinite(target):
            ax.axhline(scale * target, color="0.4", linestyle=":", linewidth=1, label="target")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(m["label"])
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        paths.append(out / name)
    return paths


def _schedule(tc: dict[str, Any]) -> str:
    schedule = config.schedule_of(tc)
    if schedule == "multistep":
        return f"lr x{tc['gamma']} at epochs {tc['milestones']}"
    warmup = tc.get("warmup_steps", 0)
    return f"{schedule} lr schedule" + (f", {warmup} warm-up steps" if warmup else "")


def machine(env: dict[str, Any]) -> str:
    """The machine and versions of a run, from its env.json."""
    cpu = env.get("cpu_model", "?")
    cores = env.get("cpus_usable", env.get("cpu_count", "?"))
    hardware = (
        f"GPU {env['cuda_device']}"
        if env.get("cuda_device")
        else f"{cores} CPU cores ({cpu}), torch threads: {env.get('torch_threads', '?')}"
    )
    return (
        f"{hardware}; torch {env.get('torch', '?')}, adahessian {env.get('adahessian', '?')}, "
        f"{env.get('date_utc', '')}"
    )


def training_line(tc: dict[str, Any]) -> str:
    """The report's line on the training recipe (the config's ``train`` table)."""
    training = f"- Training: {tc['epochs']} epochs, batch {tc['batch_size']}, {_schedule(tc)}"
    if tc.get("eval_every"):
        training += f", evaluated every {tc['eval_every']} steps and at each epoch's end"
    if "train_subset" in tc:
        training += f", train_subset {tc['train_subset'] or 'all'}"
        training += f", test_subset {tc.get('test_subset') or 'all'}"
    if tc.get("max_steps"):
        training += f", at most {tc['max_steps']} steps per epoch"
    return training


def comparison(
    runs: pd.DataFrame, task: str, order: list[str], metric: dict[str, Any], fallback: str | None
) -> list[str]:
    """The paired comparison per seed of every AdaHessian of the run with the paper's baseline
    for ``task`` (``fallback`` where the run has not trained it): Markdown lines."""
    claim = paper_claim(task)
    present = set(runs["optimizer"])
    base = baseline_of(task, present, fallback)
    ours = [o for o in order if o in present and not optimizers.first_order(o)]
    if base is None or not ours:
        return []
    scale, fmt = metric["scale"], metric["fmt"]
    better = "higher" if metric["higher_is_better"] else "lower"
    rows = []
    for opt in ours:
        p = paired(runs, opt, base)
        interval = (
            f"[{format(scale * p['low'], '+' + fmt)}, {format(scale * p['high'], '+' + fmt)}]"
            if np.isfinite(p["low"])
            else "n/a (one seed)"
        )
        rows.append({"optimizer": opt, "baseline": base, "seeds paired": p["n"],
                     f"final {metric['label']}: mean difference": (
                         format(scale * p["mean"], "+" + fmt) if p["n"] else "n/a"),
                     "95 % interval": interval})  # fmt: skip
    lines = [
        "",
        f"Paired by seed (same seed: same data order and initial weights), the final "
        f"{metric['label']} of each AdaHessian minus {base}'s ({better} is better); the interval "
        "is Student's t over the seeds' differences."
        + (f" The paper's claim ({base} is its baseline): {claim[1]}." if claim else ""),
        "",
        tabulate(
            pd.DataFrame(rows),
            headers="keys",
            tablefmt="github",
            showindex=False,
            disable_numparse=True,
        ),
    ]
    return lines


def make_report(out: Path, target: float | None = None) -> str:
    """Write ``out/report.md`` and the plots; return the Markdown. NotWritten (holding the
    Markdown) if they cannot be written. ``target`` None: the median final validation metric of
    the paper's baseline for the task (else of the best first-order optimizer), or the profile's
    ``target`` in a run without first-order optimizers.
    """
    out = Path(out)
    if not (folder(out).files / "config.json").exists() and not folder(out).runs():
        raise FileNotFoundError(f"no */metrics.jsonl under {out}: run `adahessian-bench run` first")
    cfg = read_config(out)
    df, incomplete, left_out = read_runs(out, cfg)
    env = read_env(out)
    cost, cost_problem = time_basis(df, out)
    df = with_time(df, cfg, cost)
    tc = cfg["train"]
    metric = cfg.get("metric", ACCURACY)
    order = list(cfg["optimizers"]) + sorted(set(df["optimizer"]) - set(cfg["optimizers"]))
    from_profile = target is None and not first_order_names(set(df["optimizer"]))
    if from_profile:
        target = tc.get("target", tc.get("target_accuracy", math.nan))
    reference = "adam" if "adam" in set(df["optimizer"]) else order[0]
    table, judged = summary(df, target, order, reference, metric, cfg["task"])
    target = judged["target"]
    seeds = sorted(df["seed"].unique())
    title = f"{cfg['task']} ({cfg.get('profile', 'no')} profile), {len(seeds)} seed(s)"
    names = plot_names(metric["key"])
    measured = bool(cost) and all(o in cost for o in set(df["optimizer"]))
    time_label = (
        "training time (s): steps x step cost measured side by side"
        if measured
        else "training wall-clock time (s)"
    )

    label = metric["label"]
    direction = "reaches" if metric["higher_is_better"] else "falls to"
    shown_target = (
        f"{format(metric['scale'] * target, metric['fmt'])}{_unit(metric)}"
        if math.isfinite(target)
        else "(none)"
    )
    judged_on = judged["runs"]["judged"].iloc[0] if len(judged["runs"]) else metric["key"]
    point = "evaluation" if cfg["train"].get("eval_every") else "epoch"
    if from_profile:
        target_line = f"the profile's target {shown_target} (no first-order optimizer ran)"
    elif judged["source"] in ("given", "none"):
        target_line = f"the target {shown_target} ({judged['source']})"
    else:
        claim = paper_claim(cfg["task"])
        whose = (
            "the paper's baseline's"
            if claim and claim[0] == judged["source"]
            else "the best first-order optimizer's"
        )
        target_line = (
            f"the target {shown_target}: {whose} ({judged['source']}) median final {judged_on}"
        )
    if measured:
        cost_clock = {
            "cpu": " on the CPU time of each step, which time spent waiting for a core does "
            "not add to",
            "wall": " on the wall clock of each step",
        }.get(str(read_json_or_none(out / steptime.COST_FILE).get("clock")), " on the wall clock")
        time_line = (
            "- Time: steps x the cost of a step, measured before training with every optimizer "
            "side by side (interleaved rounds on the same batches, the median per optimizer and "
            f"step kind: `step_cost.json`){cost_clock}, so that the machine's load falls on all "
            "alike; an AdaHessian's time counts its Hessian and plain steps at their own costs. "
            "`wall clock`: the measured training time of each run, which the load of its moment "
            "skews."
        )
    else:
        why = {
            "missing": "no side-by-side step cost was measured for this folder",
            None: "no side-by-side step cost was measured for this folder",
        }.get(cost_problem, f"`step_cost.json` is not used: {cost_problem}")
        time_line = (
            f"- Time: the wall clock of each run ({why}): runs that trained at a busy moment "
            "look slower."
        )
    budget = judged["budget"]
    fallback = judged["source"] if judged["source"] not in ("given", "none") else None
    lines = [
        f"# {cfg['task']}, {cfg.get('profile', 'no')} profile",
        "",
        f"- Command: `{env.get('command', '?')}`",
        f"- Machine: {machine(env)}",
        training_line(tc),
        (
            f"- Mean ± std over seeds {', '.join(map(str, seeds))}."
            if len(seeds) > 1
            else f"- One seed ({seeds[0]}): no spread over seeds."
        )
        + f" Best: the best epoch's {label} ("
        + ("higher" if metric["higher_is_better"] else "lower")
        + " is better).",
        time_line,
        f"- Steps and time to target: until the first {point} whose {judged_on} {direction} "
        f"{target_line}; `{label} there`: the test metric at that {point}."
        + (
            f" `within {budget:.0f} s`: the {label} at the last {point} within the "
            f"fastest first-order optimizer's ({judged['fastest']}) median training time."
            if math.isfinite(budget)
            else ""
        ),
        *notes(incomplete, left_out),
        "",
        tabulate(table, headers="keys", tablefmt="github", showindex=False, disable_numparse=True),
        *comparison(judged["runs"], cfg["task"], order, metric, fallback),
        "",
        f"![{label} vs epoch]({names[0]})",
        f"![{label} vs time]({names[1]})",
        "",
    ]
    text = "\n".join(lines)
    try:
        plot(df, out, order, title, metric, time_label, target)
        atomic_write_text(out / "report.md", text)
    except OSError as e:
        raise NotWritten(out, e, text) from None
    return text


def written_plots(out: str | Path) -> tuple[str, str]:
    """The names of the plots ``make_report`` wrote for the run folder ``out``."""
    cfg = read_config(Path(out))
    return plot_names(cfg.get("metric", ACCURACY)["key"])


def check_publish_dest(out: Path, dest: Path) -> None:
    """ValueError unless ``dest`` can take a published copy of the folder ``out``: not the
    folder itself, nothing inside it (the copy would land among the runs it reports), and not an
    existing file. Checked before the report is written."""
    here, there = Path(out).resolve(), Path(dest).resolve()
    if there == here:
        raise ValueError(
            f"--publish {dest} is the run folder itself: publish to another folder "
            "(docs/results/NAME)"
        )
    if here in there.parents:
        raise ValueError(
            f"--publish {dest} is inside the run folder {out}: publish to a folder outside it "
            "(docs/results/NAME)"
        )
    if there.exists() and not there.is_dir():
        raise ValueError(f"--publish {dest} is an existing file: name a folder")


def publish(out: Path, dest: Path) -> list[Path]:
    """Copy a reported run folder's results to ``dest`` (e.g. ``docs/results/TASK-quick``): the
    report and its plots, and under ``dest/metrics`` the per-epoch metrics of the runs the report
    reads (``OPT-seedS.jsonl``; those it leaves out, unfinished or of another configuration, stay
    behind), the resolved configuration, the environment and the step costs; no checkpoint.
    Returns the files written."""
    out, dest = Path(out), Path(dest)
    if not (out / "report.md").is_file():
        raise FileNotFoundError(f"{out}/report.md is missing: run `adahessian-bench report` first")
    cfg = read_config(out)
    copies = [(out / "report.md", dest / "report.md")]
    copies += [(out / name, dest / name) for name in plot_names(cfg.get("metric", ACCURACY)["key"])]
    for name in ("config.json", "env.json", steptime.COST_FILE):
        copies.append((out / name, dest / "metrics" / name))
    df, _, _ = read_runs(out, cfg)
    for run in reported_runs(df):
        copies.append((out / run / "metrics.jsonl", dest / "metrics" / f"{run}.jsonl"))
    return copy_files(copies)


def copy_files(copies: list[tuple[Path, Path]]) -> list[Path]:
    """Copy each existing ``src`` to its ``target`` (atomically, creating its folder); return the
    targets written. ``publish``'s copying, for run and sweep folders alike."""
    written = []
    for src, target in copies:
        if src.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target, src.read_bytes())
            written.append(target)
    return written
