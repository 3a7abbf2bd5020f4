"""Report: a Markdown table over optimizers (mean ± std over seeds) and accuracy plots (PNG)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from tabulate import tabulate

PLOTS = ("test_acc_vs_epoch.png", "test_acc_vs_time.png")


def load_metrics(out: Path) -> pd.DataFrame:
    """Every metrics line of every run under ``out``, in one frame."""
    rows = []
    for f in sorted(out.glob("*/metrics.jsonl")):
        rows += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    if not rows:
        raise FileNotFoundError(f"no */metrics.jsonl under {out}: run `adahessian-bench run` first")
    return pd.DataFrame(rows)


def _mean_std(values: pd.Series, fmt: str, scale: float = 1.0) -> str:
    v = values.dropna().to_numpy(dtype=float) * scale
    if len(v) == 0:
        return "n/a"
    if len(v) == 1:
        return format(v[0], fmt)
    return f"{format(v.mean(), fmt)} ± {format(v.std(ddof=1), fmt)}"


def summary(df: pd.DataFrame, target: float, order: list[str], reference: str = "adam"):
    """One row per optimizer: accuracies, step time (absolute and relative), time to target."""
    per_run = []
    for (opt, seed), g in df.groupby(["optimizer", "seed"]):
        g = g.sort_values("epoch")
        reached = g[g["test_acc"] >= target]
        per_run.append(
            {
                "optimizer": opt,
                "seed": seed,
                "best": g["test_acc"].max(),
                "final": g["test_acc"].iloc[-1],
                "epochs": int(g["epoch"].iloc[-1]),
                # The median over epochs of the mean step time: robust to a noisy epoch.
                "step_time": g["mean_step_time_s"].median(),
                "to_target": reached["train_time_s"].iloc[0] if len(reached) else np.nan,
                "peak_mem": g["peak_memory_mb"].max(),
                "diverged": "diverged" in g and bool(g["diverged"].eq(True).any()),
            }
        )
    runs = pd.DataFrame(per_run)
    ref_time = runs.loc[runs["optimizer"] == reference, "step_time"].mean()
    rows = []
    for opt in [o for o in order if o in set(runs["optimizer"])]:
        r = runs[runs["optimizer"] == opt]
        n_reached = int(r["to_target"].notna().sum())
        to_target = _mean_std(r["to_target"], ".0f")
        if n_reached < len(r):
            to_target = (
                f"{to_target} ({n_reached}/{len(r)} reached)" if n_reached else "not reached"
            )
        rel = r["step_time"].mean() / ref_time if np.isfinite(ref_time) else np.nan
        rows.append(
            {
                "optimizer": opt + (" (diverged)" if r["diverged"].any() else ""),
                "seeds": len(r),
                "best test acc (%)": _mean_std(r["best"], ".2f", 100),
                "final test acc (%)": _mean_std(r["final"], ".2f", 100),
                "ms / step": _mean_std(r["step_time"], ".0f", 1000),
                f"step time vs {reference}": "n/a" if not np.isfinite(rel) else f"{rel:.2f}x",
                f"time to {100 * target:g}% (s)": to_target,
                "peak memory (MiB)": _mean_std(r["peak_mem"], ".0f"),
            }
        )
    return pd.DataFrame(rows)


def _curves(df: pd.DataFrame, opt: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds of test accuracy per epoch, and the mean training time per epoch."""
    g = df[df["optimizer"] == opt]
    acc = g.pivot_table(index="epoch", columns="seed", values="test_acc")
    tim = g.pivot_table(index="epoch", columns="seed", values="train_time_s")
    std = acc.std(axis=1, ddof=1).fillna(0.0) if acc.shape[1] > 1 else acc.iloc[:, 0] * 0
    return acc.index.to_numpy(), tim.mean(axis=1).to_numpy(), acc.mean(axis=1).to_numpy(), std


def plot(df: pd.DataFrame, out: Path, order: list[str], title: str) -> list[Path]:
    paths = []
    for name, xlabel in zip(PLOTS, ("epoch", "training wall-clock time (s)"), strict=True):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        for opt in [o for o in order if o in set(df["optimizer"])]:
            epochs, times, mean, std = _curves(df, opt)
            x = epochs if name == PLOTS[0] else times
            (line,) = ax.plot(x, 100 * mean, marker="o", markersize=3, label=opt)
            ax.fill_between(
                x, 100 * (mean - std), 100 * (mean + std), color=line.get_color(), alpha=0.2
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(out / name)
        plt.close(fig)
        paths.append(out / name)
    return paths


def make_report(out: Path, target: float | None = None) -> str:
    """Write ``out/report.md`` and the plots; return the Markdown."""
    out = Path(out)
    df = load_metrics(out)
    cfg: dict[str, Any] = json.loads((out / "config.json").read_text())
    env: dict[str, Any] = {}
    if (out / "env.json").is_file():
        env = json.loads((out / "env.json").read_text())
    tc = cfg["train"]
    target = target if target is not None else tc.get("target_accuracy", 0.9)
    order = list(cfg["optimizers"]) + sorted(set(df["optimizer"]) - set(cfg["optimizers"]))
    table = summary(df, target, order)
    seeds = sorted(df["seed"].unique())
    title = f"{cfg['task']} ({cfg['profile']} profile), {len(seeds)} seed(s)"
    plot(df, out, order, title)

    cpu = env.get("cpu_model", "?")
    cores = env.get("cpus_usable", env.get("cpu_count", "?"))
    machine = (
        f"GPU {env['cuda_device']}"
        if env.get("cuda_device")
        else f"{cores} CPU cores ({cpu}), torch threads: {env.get('torch_threads', '?')}"
    )
    train_n = tc.get("train_subset") or "all"
    test_n = tc.get("test_subset") or "all"
    lines = [
        f"# {cfg['task']}, {cfg['profile']} profile",
        "",
        f"- Command: `{env.get('command', '?')}`",
        f"- Machine: {machine}; torch {env.get('torch', '?')}, "
        f"adahessian {env.get('adahessian', '?')}, {env.get('date_utc', '')}",
        f"- Training: {tc['epochs']} epochs, batch {tc['batch_size']}, "
        f"lr x{tc['gamma']} at epochs {tc['milestones']}, training images: {train_n}, "
        f"test images: {test_n}"
        + (f", at most {tc['max_steps']} steps per epoch" if tc.get("max_steps") else ""),
        (
            f"- Mean ± std over seeds {', '.join(map(str, seeds))}."
            if len(seeds) > 1
            else f"- One seed ({seeds[0]}): no spread over seeds."
        )
        + " Step time: forward + backward "
        "+ optimizer step, the median over epochs of the mean per step. Time to target: "
        "training time (evaluation excluded) until the first epoch whose test accuracy "
        f"reaches {100 * target:g}%.",
        "",
        tabulate(table, headers="keys", tablefmt="github", showindex=False, disable_numparse=True),
        "",
        f"![test accuracy vs epoch]({PLOTS[0]})",
        f"![test accuracy vs time]({PLOTS[1]})",
        "",
    ]
    text = "\n".join(lines)
    (out / "report.md").write_text(text)
    return text
