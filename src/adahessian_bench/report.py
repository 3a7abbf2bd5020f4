"""Report: a Markdown table over optimizers (mean ± std over seeds) and metric plots (PNG).

The metric is the task's (``config.json``'s ``metric``: test accuracy, perplexity, BLEU ...);
runs written before tasks named their metric are read as test accuracy.

Only the runs of ``config.json``'s configuration are reported (a run folder of another optimizer
or seed, or whose metrics carry another ``config_hash``, is left out and named); unfinished runs
are reported as they are and named too. A folder the report cannot be written into still gets its
report, printed (``NotWritten``).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from tabulate import tabulate

from .config import config_hash, run_config, run_dirs
from .data import atomic_write_text

# The metric of runs whose config.json names none (written before tasks named their metric).
ACCURACY: dict[str, Any] = {"key": "test_acc", "label": "test accuracy (%)",
                            "higher_is_better": True, "scale": 100.0, "fmt": ".2f",
                            "extra": []}  # fmt: skip


def plot_names(metric_key: str = "test_acc") -> tuple[str, str]:
    """The two plots of a report: the metric against epochs and against training time."""
    return f"{metric_key}_vs_epoch.png", f"{metric_key}_vs_time.png"


PLOTS = plot_names()


class NotWritten(OSError):
    """The report could not be written into its folder (read-only ...); ``text`` holds it."""

    def __init__(self, out: Path, error: OSError, text: str) -> None:
        super().__init__(f"the report could not be written into {out} ({error.strerror or error})")
        self.text = text


def read_json(path: Path) -> Any:
    """A JSON file of a run or sweep folder; FileNotFoundError or ValueError naming the file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: not a run or sweep folder") from None
    except ValueError:
        raise ValueError(f"{path} is damaged (not JSON): make it again (rerun)") from None


def read_env(out: Path) -> dict[str, Any]:
    """The env.json of a run folder; empty if missing or damaged (it only describes the machine)."""
    try:
        env = json.loads((out / "env.json").read_text())
    except (OSError, ValueError):
        return {}
    return env if isinstance(env, dict) else {}


def read_runs(out: Path, cfg: dict[str, Any]) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The metrics lines of the runs under ``out`` of the configuration ``cfg`` (config.json's),
    in one frame (null, a non-finite value, read as NaN); the runs that are incomplete; and those
    left out, each with the reason. FileNotFoundError if no run has a finished epoch."""
    ours = [f"{o}-seed{s}" for s in cfg.get("seeds", []) for o in cfg.get("optimizers", {})]
    epochs = cfg["train"]["epochs"]

    def of_cfg(m: dict[str, Any]) -> bool:
        """Whether a metrics line is of a run of ``cfg`` (lines of older files carry no hash)."""
        if "config_hash" not in m:
            return True
        if m["optimizer"] not in cfg.get("optimizers", {}):
            return False
        return bool(m["config_hash"] == config_hash(run_config(cfg, m["optimizer"], m["seed"])))

    rows: list[dict[str, Any]] = []
    incomplete, left_out = [], []
    for name in sorted(set(run_dirs(out)) | set(ours)):
        path = out / name / "metrics.jsonl"
        try:
            text = path.read_text() if path.is_file() else ""
            lines = [json.loads(x) for x in text.splitlines() if x.strip()]
            if not all(isinstance(m, dict) and {"optimizer", "seed", "epoch"} <= set(m)
                       for m in lines):  # fmt: skip
                raise ValueError
        except ValueError:
            left_out.append(f"{name} (its metrics.jsonl is damaged)")
            continue
        if (ours and name not in ours) or not all(of_cfg(m) for m in lines):
            left_out.append(f"{name} (another configuration than config.json's)")
        elif not lines:
            started = path.parent.is_dir()
            incomplete.append(f"{name} ({'no finished epoch' if started else 'not started'})")
        else:
            last = lines[-1]
            if last["epoch"] < epochs and not last.get("diverged"):
                incomplete.append(f"{name} ({last['epoch']} of {epochs} epochs)")
            rows += [{k: math.nan if v is None else v for k, v in m.items()} for m in lines]
    if not rows:
        raise FileNotFoundError(
            f"no */metrics.jsonl with a finished epoch under {out}: "
            "run `adahessian-bench run` first"
        )
    return pd.DataFrame(rows), incomplete, left_out


def notes(incomplete: list[str], left_out: list[str]) -> list[str]:
    """The report's lines on the incomplete runs and the runs left out."""
    lines = []
    if incomplete:
        lines.append(
            "- Incomplete (interrupted, or still running; `--resume` continues them): "
            f"{', '.join(incomplete)}."
        )
    if left_out:
        lines.append(f"- Left out: {', '.join(left_out)}.")
    return lines


def _mean_std(values: pd.Series, fmt: str, scale: float = 1.0) -> str:
    v = values.dropna().to_numpy(dtype=float) * scale
    if len(v) == 0:
        return "n/a"
    if len(v) == 1:
        return format(v[0], fmt)
    return f"{format(v.mean(), fmt)} ± {format(v.std(ddof=1), fmt)}"


def run_outcome(g: pd.DataFrame, key: str, higher: bool) -> dict[str, Any]:
    """One run's metrics (sorted by epoch): the final and the best epoch's ``key``, and whether
    the run diverged."""
    return {
        "final": g[key].iloc[-1],
        "best": g[key].max() if higher else g[key].min(),
        "diverged": "diverged" in g and bool(g["diverged"].eq(True).any()),
    }


def _unit(metric: dict[str, Any]) -> str:
    return "%" if metric["scale"] == 100 else ""


def summary(
    df: pd.DataFrame,
    target: float,
    order: list[str],
    reference: str = "adam",
    metric: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """One row per optimizer: the metric (best and final epoch), the other metrics the task names
    (final epoch), step time (absolute and relative to ``reference``), time to ``target``."""
    m = metric or ACCURACY
    key, higher = m["key"], m["higher_is_better"]
    valid = "valid_" + key.removeprefix("test_")  # e.g. valid_ppl for test_ppl, if evaluated
    per_run = []
    for (opt, seed), g in df.groupby(["optimizer", "seed"]):
        g = g.sort_values("epoch")
        reached = g[g[key] >= target] if higher else g[g[key] <= target]
        per_run.append(
            {
                "optimizer": opt,
                "seed": seed,
                **run_outcome(g, key, higher),
                # The epoch a user would pick without looking at the test set: the best on valid.
                "at_best_valid": (
                    g[key].loc[g[valid].idxmax() if higher else g[valid].idxmin()]
                    if valid in g
                    else np.nan
                ),
                **{f"extra:{k}": g[k].iloc[-1] for k in m["extra"] if k in g},
                "epochs": int(g["epoch"].iloc[-1]),
                # The median over epochs of the mean step time: robust to a noisy epoch.
                "step_time": g["mean_step_time_s"].median(),
                "to_target": reached["train_time_s"].iloc[0] if len(reached) else np.nan,
                "peak_mem": g["peak_memory_mb"].max(),
            }
        )
    runs = pd.DataFrame(per_run)
    ref_time = runs.loc[runs["optimizer"] == reference, "step_time"].mean()
    scale, fmt = m["scale"], m["fmt"]
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
        extra = {
            f"final {k}": _mean_std(r[f"extra:{k}"], ".4f") for k in m["extra"] if f"extra:{k}" in r
        }
        if r["at_best_valid"].notna().any():
            extra = {f"{m['label']} at best valid epoch": _mean_std(r["at_best_valid"], fmt, scale),
                     **extra}  # fmt: skip
        rows.append(
            {
                "optimizer": opt + (" (diverged)" if r["diverged"].any() else ""),
                "seeds": len(r),
                f"best {m['label']}": _mean_std(r["best"], fmt, scale),
                f"final {m['label']}": _mean_std(r["final"], fmt, scale),
                **extra,
                "ms / step": _mean_std(r["step_time"], ".0f", 1000),
                f"step time vs {reference}": "n/a" if not np.isfinite(rel) else f"{rel:.2f}x",
                f"time to {scale * target:g}{_unit(m)} (s)": to_target,
                "peak memory (MiB)": _mean_std(r["peak_mem"], ".0f"),
            }
        )
    return pd.DataFrame(rows)


def _curves(
    df: pd.DataFrame, opt: str, key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std over seeds of the metric per epoch, and the mean training time per epoch."""
    g = df[df["optimizer"] == opt]
    acc = g.pivot_table(index="epoch", columns="seed", values=key)
    tim = g.pivot_table(index="epoch", columns="seed", values="train_time_s")
    std = acc.std(axis=1, ddof=1).fillna(0.0) if acc.shape[1] > 1 else acc.iloc[:, 0] * 0
    return acc.index.to_numpy(), tim.mean(axis=1).to_numpy(), acc.mean(axis=1).to_numpy(), std


def plot(
    df: pd.DataFrame,
    out: Path,
    order: list[str],
    title: str,
    metric: dict[str, Any] | None = None,
) -> list[Path]:
    m = metric or ACCURACY
    names = plot_names(m["key"])
    scale = m["scale"]
    paths = []
    for name, xlabel in zip(names, ("epoch", "training wall-clock time (s)"), strict=True):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
        for opt in [o for o in order if o in set(df["optimizer"])]:
            epochs, times, mean, std = _curves(df, opt, m["key"])
            x = epochs if name == names[0] else times
            (line,) = ax.plot(x, scale * mean, marker="o", markersize=3, label=opt)
            ax.fill_between(
                x, scale * (mean - std), scale * (mean + std), color=line.get_color(), alpha=0.2
            )
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
    schedule = tc.get("schedule", "multistep")
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
    if "train_subset" in tc:
        training += f", train_subset {tc['train_subset'] or 'all'}"
        training += f", test_subset {tc.get('test_subset') or 'all'}"
    if tc.get("max_steps"):
        training += f", at most {tc['max_steps']} steps per epoch"
    return training


def make_report(out: Path, target: float | None = None) -> str:
    """Write ``out/report.md`` and the plots; return the Markdown. NotWritten (holding the
    Markdown) if they cannot be written."""
    out = Path(out)
    if not (out / "config.json").exists() and not run_dirs(out):
        raise FileNotFoundError(f"no */metrics.jsonl under {out}: run `adahessian-bench run` first")
    cfg: dict[str, Any] = read_json(out / "config.json")
    df, incomplete, left_out = read_runs(out, cfg)
    env = read_env(out)
    tc = cfg["train"]
    metric = cfg.get("metric", ACCURACY)
    if target is None:
        target = tc.get("target", tc.get("target_accuracy", 0.9))
    order = list(cfg["optimizers"]) + sorted(set(df["optimizer"]) - set(cfg["optimizers"]))
    reference = "adam" if "adam" in set(df["optimizer"]) else order[0]
    table = summary(df, target, order, reference, metric)
    seeds = sorted(df["seed"].unique())
    title = f"{cfg['task']} ({cfg['profile']} profile), {len(seeds)} seed(s)"
    names = plot_names(metric["key"])

    label = metric["label"]
    direction = "reaches" if metric["higher_is_better"] else "falls to"
    shown_target = f"{metric['scale'] * target:g}{_unit(metric)}"
    lines = [
        f"# {cfg['task']}, {cfg['profile']} profile",
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
        + " is better). Step time: forward + backward + optimizer step, the median over epochs "
        "of the mean per step. Time to target: training time (evaluation excluded) until the "
        f"first epoch whose {label} {direction} {shown_target}.",
        *notes(incomplete, left_out),
        "",
        tabulate(table, headers="keys", tablefmt="github", showindex=False, disable_numparse=True),
        "",
        f"![{label} vs epoch]({names[0]})",
        f"![{label} vs time]({names[1]})",
        "",
    ]
    text = "\n".join(lines)
    try:
        plot(df, out, order, title, metric)
        atomic_write_text(out / "report.md", text)
    except OSError as e:
        raise NotWritten(out, e, text) from None
    return text


def written_plots(out: str | Path) -> tuple[str, str]:
    """The names of the plots ``make_report`` wrote for the run folder ``out``."""
    cfg = read_json(Path(out) / "config.json")
    return plot_names(cfg.get("metric", ACCURACY)["key"])
