"""Statistics over runs: each run's outcome, the target (the paper's baseline's median final
validation metric, else the best first-order optimizer's), the time to reach it, and the paired
comparison by seed."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from . import optimizers


def run_outcome(g: pd.DataFrame, key: str, higher: bool) -> dict[str, Any]:
    """One run's metrics (sorted by epoch): the final and the best epoch's ``key``, and whether
    the run diverged."""
    return {
        "final": g[key].iloc[-1],
        "best": g[key].max() if higher else g[key].min(),
        "diverged": "diverged" in g and bool(g["diverged"].eq(True).any()),
    }


# The paper's baseline per task (its headline claim's comparator) and the claim, for the paired
# comparison. Tasks named like another plus a suffix (``fmnist-resnet32``) match the longest name.
PAPER_CLAIMS: dict[str, tuple[str, str]] = {
    "fmnist-resnet": ("adam", "CIFAR-10 ResNet20: +1.80 points test accuracy over Adam "
                              "(92.13 vs 90.33; SGD 92.08)"),
    "cifar10-resnet": ("adam", "CIFAR-10 ResNet20: +1.80 points test accuracy over Adam "
                               "(92.13 vs 90.33; SGD 92.08)"),
    "brown-lm": ("adamw", "PTB language model: 2.7 lower test perplexity than AdamW"),
    "bible-translation": ("adamw", "IWSLT14 de-en: +0.13 BLEU over AdamW"),
    "movielens-dlrm": ("adagrad", "DLRM on Criteo: +0.032 points accuracy over Adagrad"),
    "reviews-classification": ("adamw", "SqueezeBERT on GLUE: +0.41 points over AdamW"),
}  # fmt: skip


def paper_claim(task: str) -> tuple[str, str] | None:
    """(the paper's baseline optimizer, its claim) for ``task``, if the paper has one."""
    names = [n for n in PAPER_CLAIMS if task.startswith(n)]
    return PAPER_CLAIMS[max(names, key=len)] if names else None


def baseline_of(task: str, trained: Any, fallback: str | None) -> str | None:
    """The optimizer AdaHessian is paired with: the paper's baseline for ``task`` if the run
    ``trained`` it, else ``fallback`` (the optimizer that set the target)."""
    claim = paper_claim(task)
    return claim[0] if claim and claim[0] in set(trained) else fallback


def per_run(df: pd.DataFrame, metric: dict[str, Any]) -> pd.DataFrame:
    """One row per (optimizer, seed): its outcome (``run_outcome``), the metric the target is set
    on (``judged``: the final validation metric where the task evaluates one, else the test
    metric) and what the table shows besides."""
    key, higher = metric["key"], metric["higher_is_better"]
    valid = "valid_" + key.removeprefix("test_")  # e.g. valid_ppl for test_ppl, if evaluated
    rows = []
    for (opt, seed), g in df.groupby(["optimizer", "seed"]):
        g = g.sort_values("epoch")
        judged = valid if valid in g and g[valid].notna().any() else key
        rows.append(
            {
                "optimizer": opt,
                "seed": seed,
                **run_outcome(g, key, higher),
                "judged_final": g[judged].iloc[-1],
                # The epoch a user would pick without looking at the test set: the best on valid.
                "at_best_valid": (
                    g[key].loc[g[valid].idxmax() if higher else g[valid].idxmin()]
                    if valid in g and g[valid].notna().any()
                    else np.nan
                ),
                **{f"extra:{k}": g[k].iloc[-1] for k in metric["extra"] if k in g},
                "epochs": int(g["epoch"].iloc[-1]),
                "steps": int(g["step"].iloc[-1]),
                "time": float(g["time_s"].iloc[-1]),
                # Seconds per step: measured side by side, else the median over epochs of the
                # loop's mean step time (robust to a noisy epoch).
                "step_s": (
                    float(g["time_s"].iloc[-1]) / max(1, int(g["step"].iloc[-1]))
                    if g["measured"].iloc[-1]
                    else g["mean_step_time_s"].median()
                ),
                "wall": float(g["train_time_s"].iloc[-1]),
                "peak_mem": g["peak_memory_mb"].max(),
                "curve": g,
                "judged": judged,
            }
        )
    return pd.DataFrame(rows)


def first_order_names(names: Any) -> list[str]:
    return [o for o in names if optimizers.is_known(o) and optimizers.first_order(o)]


def baseline_target(
    runs: pd.DataFrame, higher: bool, task: str | None = None
) -> tuple[float, str] | None:
    """The target: the paper's baseline's median (over seeds) final validation metric where the
    runs hold the baseline of ``task`` (``paper_claim``), else the best first-order optimizer's;
    and that optimizer. None without first-order runs."""
    medians = {
        o: runs.loc[runs["optimizer"] == o, "judged_final"].median()
        for o in first_order_names(runs["optimizer"].unique())
    }
    medians = {o: v for o, v in medians.items() if np.isfinite(v)}
    if not medians:
        return None
    claim = paper_claim(task) if task else None
    if claim and claim[0] in medians:
        return float(medians[claim[0]]), claim[0]
    best = (max if higher else min)(medians, key=lambda o: medians[o])
    return float(medians[best]), best


def reach(run: pd.Series, target: float, higher: bool, key: str) -> dict[str, float]:
    """The first epoch of ``run`` whose judged metric reaches ``target``: its step, time and test
    metric (NaN if none does)."""
    g = run["curve"]
    j = g[run["judged"]]
    hit = g[j >= target] if higher else g[j <= target]
    if not len(hit):
        return {"steps": np.nan, "time": np.nan, "test": np.nan}
    first = hit.iloc[0]
    return {"steps": float(first["step"]), "time": float(first["time_s"]), "test": first[key]}


def within(run: pd.Series, budget: float, key: str) -> float:
    """The test metric of the last epoch of ``run`` that ended within ``budget`` seconds."""
    g = run["curve"]
    done = g[g["time_s"] <= budget * (1 + 1e-9)]
    return float(done[key].iloc[-1]) if len(done) else np.nan


def paired(runs: pd.DataFrame, a: str, b: str, column: str = "final") -> dict[str, float]:
    """The paired difference ``a - b`` of ``column`` over the seeds both ran (same seed = same
    data order and initial weights): n, mean and the 95 % t interval (NaN for n < 2)."""
    x = runs[runs["optimizer"] == a].set_index("seed")[column]
    y = runs[runs["optimizer"] == b].set_index("seed")[column]
    d = (x - y).dropna()
    n = len(d)
    out = {"n": n, "mean": float(d.mean()) if n else np.nan, "low": np.nan, "high": np.nan}
    if n >= 2:
        half = float(stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n))
        out.update(low=out["mean"] - half, high=out["mean"] + half)
    return out


def steps_needed(budgets: list[tuple[int, float]], target: float, higher: bool) -> float:
    """The steps at which a metric that ends at ``budgets`` ((steps, final metric), by steps)
    first reaches ``target``, interpolated linearly between two budgets; NaN if no budget does,
    the first budget's steps if it does."""
    reached = [(s >= target) if higher else (s <= target) for _, s in budgets]
    if not any(reached):
        return math.nan
    i = reached.index(True)
    if i == 0:
        return float(budgets[0][0])
    (s0, m0), (s1, m1) = budgets[i - 1], budgets[i]
    return s0 + (s1 - s0) * (target - m0) / (m1 - m0) if m1 != m0 else float(s1)
