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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from scipy import stats
from tabulate import tabulate

from . import optimizers, stepcost
from .config import check_resolved, config_hash, run_config, run_dirs
from .data import atomic_write_bytes, atomic_write_text

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


PUBLISHED = "metrics"  # report --publish copies the metrics and configuration to DEST/metrics


@dataclass(frozen=True)
class Folder:
    """Where the results of one run folder lie.

    As the harness writes them: ``path/config.json`` (and ``env.json``, ``step_cost.json``) and
    ``path/OPT-seedS/metrics.jsonl`` (``prefix`` None). As ``report --publish`` copies them
    (``docs/results/NAME``): ``path/metrics/config.json`` and ``path/metrics/OPT-seedS.jsonl``
    (``prefix`` ""); a point of a published sweep: ``path/metrics/POINT_OPT-seedS.jsonl``
    (``prefix`` "POINT_"), whose configuration is the sweep's first point's with the point's
    ``budget`` (the only swept setting read this way)."""

    path: Path
    files: Path  # config.json, env.json, step_cost.json
    prefix: str | None = None
    budget: float | None = None

    def __str__(self) -> str:
        point = self.prefix.rstrip("_") if self.prefix else ""
        return f"{self.path} (point {point})" if point else str(self.path)

    def metrics(self, run: str) -> Path:
        """The metrics file of the run ``OPT-seedS``."""
        if self.prefix is None:
            return self.path / run / "metrics.jsonl"
        return self.files / f"{self.prefix}{run}.jsonl"

    def runs(self) -> list[str]:
        """The runs that have results here (``OPT-seedS``; a checkpoint counts in the harness's
        own folders)."""
        if self.prefix is None:
            return run_dirs(self.path)
        if not self.files.is_dir():
            return []
        stems = [f.name.removesuffix(".jsonl") for f in self.files.glob("*.jsonl")]
        if self.prefix:
            return sorted(s.removeprefix(self.prefix) for s in stems if s.startswith(self.prefix))
        return sorted(s for s in stems if "_" not in s)  # a sweep's metrics are POINT_RUN


def folder(out: Path | Folder) -> Folder:
    """``out`` as a :class:`Folder`: a published copy if it has ``metrics/config.json`` and no
    ``config.json`` of its own, else a folder the harness writes."""
    if isinstance(out, Folder):
        return out
    out = Path(out)
    if not (out / "config.json").exists() and (out / PUBLISHED / "config.json").is_file():
        return Folder(out, out / PUBLISHED, "")
    return Folder(out, out)


def read_json(path: Path) -> Any:
    """A JSON file of a run or sweep folder; FileNotFoundError or ValueError naming the file."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is missing: not a run or sweep folder") from None
    except ValueError:
        raise ValueError(f"{path} is damaged (not JSON): make it again (rerun)") from None


def read_config(out: Path | Folder) -> dict[str, Any]:
    """The config.json of a run folder, checked (``config.check_resolved``); FileNotFoundError or
    ValueError naming the file and what is wrong with it."""
    f = folder(out)
    path = f.files / "config.json"
    cfg = read_json(path)
    if f.budget is not None and isinstance(cfg, dict) and isinstance(cfg.get("train"), dict):
        cfg["train"]["budget"] = f.budget
    try:
        check_resolved(cfg)
    except ValueError as e:
        raise ValueError(f"{path} is damaged ({e}): make it again (rerun)") from None
    cfg = {"seeds": [], "optimizers": {}, **cfg}  # absent in folders of old versions
    if "metric" in cfg:
        cfg["metric"] = {"extra": [], **cfg["metric"]}
    return cfg


def read_json_or_none(path: Path) -> dict[str, Any]:
    """A JSON object file, or {} if it is missing, damaged or not an object."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


def read_env(out: Path | Folder) -> dict[str, Any]:
    """The env.json of a run folder; empty if missing or damaged (it only describes the machine)."""
    return read_json_or_none(folder(out).files / "env.json")


PROGRESS = "no run has finished, so the figures are of the epochs so far"


def read_runs(out: Path | Folder, cfg: dict[str, Any]) -> tuple[pd.DataFrame, list[str], list[str]]:
    """The metrics lines of the finished runs under ``out`` of the configuration ``cfg``
    (config.json's), in one frame (null, a non-finite value, read as NaN); the runs that are
    incomplete; and those left out, each with the reason. An incomplete run (interrupted, or still
    running) is named but not read, so that its last epoch so far never counts as a final one;
    only when no run has finished are the incomplete runs' epochs read, as a progress report (its
    note says so). FileNotFoundError if no run has a finished epoch."""
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
    partial: list[dict[str, Any]] = []  # the epochs of the incomplete runs
    incomplete, left_out = [], []
    key = cfg.get("metric", ACCURACY)["key"]
    f = folder(out)
    for name in sorted(set(f.runs()) | set(ours)):
        path = f.metrics(name)
        try:
            text = path.read_text() if path.is_file() else ""
            lines = _metrics_lines(text, key, name)
        except ValueError as e:
            left_out.append(f"{name} (its {path.name} is damaged: {e})")
            continue
        if (ours and name not in ours) or not all(of_cfg(m) for m in lines):
            left_out.append(f"{name} (another configuration than config.json's)")
        elif not lines:
            started = path.exists() or (f.prefix is None and path.parent.is_dir())
            incomplete.append(f"{name} ({'no finished epoch' if started else 'not started'})")
        else:
            last = lines[-1]
            read = [{k: math.nan if v is None else v for k, v in m.items()} for m in lines]
            planned = last.get("epochs", epochs)  # the run's own count (a budget changes it)
            unfinished = last.get("kind") == "eval" or last["epoch"] < planned
            if unfinished and not last.get("diverged"):
                incomplete.append(f"{name} ({last['epoch']} of {planned} epochs)")
                partial += read
            else:
                rows += read
    if not rows and partial:
        incomplete.append(PROGRESS)
        rows = partial
    if not rows:
        raise FileNotFoundError(
            f"no */metrics.jsonl with a finished epoch under {out}: "
            "run `adahessian-bench run` first"
        )
    return pd.DataFrame(rows), incomplete, left_out


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# The fields of a metrics line that are not numbers (every other one is a number, or null).
_KINDS = {"optimizer": str, "config_hash": str, "kind": str, "diverged": bool}
_KIND_WORDS = {"optimizer": "a name", "config_hash": "a hash", "kind": "a word",
               "diverged": "true or false"}  # fmt: skip


def _metrics_lines(text: str, key: str, run: str | None = None) -> list[dict[str, Any]]:
    """The lines of a metrics.jsonl; ValueError naming the first damaged line: not JSON, a line
    without the optimizer, seed, epoch or the metric ``key``, a value that is not a number
    (the metrics may be null: a diverged run's), or an epoch that does not follow the one before
    (a duplicated epoch), or (``run`` given: the folder's name, ``OPT-seedS``) a line of another
    run."""
    lines: list[dict[str, Any]] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        try:
            m = json.loads(raw)
        except ValueError:
            raise ValueError(f"line {number} is not JSON") from None
        if not isinstance(m, dict):
            raise ValueError(f"line {number} is not a JSON object")
        missing = [k for k in ("optimizer", "seed", "epoch", key) if k not in m]
        if missing:
            raise ValueError(f"line {number} lacks {', '.join(missing)}")
        for k, v in m.items():  # the names and flags of a line, its numbers (null: not finite)
            kind = _KINDS.get(k)
            if not (isinstance(v, kind) if kind else v is None or _number(v)):
                raise ValueError(
                    f"line {number}: {k} is {v!r}, not {_KIND_WORDS.get(k, 'a number')}"
                )
        for k in ("seed", "epoch", "step"):
            v = m.get(k, 0)
            if not (_number(v) and 0 <= v < math.inf) or (k == "seed" and not isinstance(v, int)):
                raise ValueError(f"line {number}: {k} is {v!r}, not a count")
        if run is not None and f"{m['optimizer']}-seed{m['seed']}" != run:
            raise ValueError(
                f"line {number} is of optimizer {m['optimizer']!r} and seed {m['seed']!r}, not "
                f"of its folder's run {run}"
            )
        value = m[key]
        if (value is None or not math.isfinite(value)) and not m.get("diverged"):
            raise ValueError(
                f"line {number}: {key} is {value!r} in a run not marked diverged (the harness "
                "writes null only with diverged: true)"
            )
        if lines and m["epoch"] <= lines[-1]["epoch"]:
            raise ValueError(
                f"line {number} repeats epoch {m['epoch']} (a duplicated or out-of-order epoch)"
            )
        lines.append(m)
    return lines


def notes(incomplete: list[str], left_out: list[str]) -> list[str]:
    """The report's lines on the incomplete runs and the runs left out."""
    lines = []
    runs = [r for r in incomplete if r != PROGRESS]
    if runs:
        left = "" if PROGRESS in incomplete else "; left out of every figure until they finish"
        lines.append(
            f"- Incomplete (interrupted, or still running; `--resume` continues them{left}): "
            f"{', '.join(runs)}."
        )
    if PROGRESS in incomplete:
        lines.append(f"- Progress report: {PROGRESS}.")
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


def read_cost(out: Path | Folder) -> tuple[dict[str, dict[str, float]], str | None]:
    """The step costs measured side by side before training (``step_cost.json``, per optimizer)
    and what is wrong with them: None, ``"missing"`` (runs of older versions, ``cost_rounds =
    0``) or why the file is damaged (not JSON, a cost that is not a finite number > 0); the costs
    are empty unless it is None."""
    path = folder(out).files / stepcost.COST_FILE
    try:
        cost = json.loads(path.read_text())["optimizers"]
    except FileNotFoundError:
        return {}, "missing"
    except (OSError, ValueError, KeyError, TypeError):
        return {}, "damaged: not the JSON the harness writes"
    if not isinstance(cost, dict):
        return {}, "damaged: not the JSON the harness writes"
    for name, c in cost.items():
        for k in ("hessian_step_s", "plain_step_s"):
            value = c.get(k) if isinstance(c, dict) else None
            if not (_number(value) and 0 < float(cast(float, value)) < math.inf):
                return {}, f"damaged: {name}'s {k} is {value!r}, not a time > 0"
    return dict(cost), None


def time_basis(
    df: pd.DataFrame, out: Path | Folder
) -> tuple[dict[str, dict[str, float]], str | None]:
    """The step costs that put every optimizer of ``df`` on one time axis, or none (and why):
    an optimizer without a measured cost would otherwise be set against the others' costs with
    its own wall clock."""
    cost, problem = read_cost(out)
    lacking = sorted(set(df["optimizer"]) - set(cost))
    if problem is None and lacking:
        problem = f"it lacks {', '.join(lacking)}"
    return ({}, problem) if problem else (cost, None)


def with_time(df: pd.DataFrame, cfg: dict[str, Any], cost: dict[str, Any]) -> pd.DataFrame:
    """``df`` with ``time_s``: the training time of each epoch's end on the report's time axis,
    steps x the cost measured side by side (``stepcost.cost_time``) for the optimizers that have
    one, else the wall clock (``train_time_s``)."""
    df = df.copy()

    def seconds(row: pd.Series) -> float:
        opt = row["optimizer"]
        if opt in cost and opt in cfg["optimizers"]:
            return stepcost.cost_time(opt, int(row["step"]), cfg["optimizers"][opt], cost[opt])
        return float(row["train_time_s"])

    df["time_s"] = df.apply(seconds, axis=1) if len(df) else []
    df["measured"] = df["optimizer"].isin([o for o in cost if o in cfg["optimizers"]])
    return df


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
        }.get(str(read_json_or_none(out / stepcost.COST_FILE).get("clock")), " on the wall clock")
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
    for name in ("config.json", "env.json", stepcost.COST_FILE):
        copies.append((out / name, dest / "metrics" / name))
    df, _, _ = read_runs(out, cfg)
    for run in reported_runs(df):
        copies.append((out / run / "metrics.jsonl", dest / "metrics" / f"{run}.jsonl"))
    return copy_files(copies)


def reported_runs(df: pd.DataFrame) -> list[str]:
    """The run folders (``OPT-seedS``) whose metrics ``read_runs`` read into ``df``: the finished
    runs of config.json's configuration (the unfinished ones only in a progress report)."""
    return sorted({f"{o}-seed{int(s)}" for o, s in zip(df["optimizer"], df["seed"], strict=True)})


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


# ----------------------------------------------------------------------------- over tasks


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


def overview(folders: list[Path], budgets: list[Path] | None = None) -> str:
    """The cross-task summary table (Markdown) of run folders (``adahessian-bench summary``);
    with ``budgets`` (budget runs or budget sweeps of the tasks' baselines), the step and time
    speedups of each AdaHessian (``step_speedup``)."""
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
    return tabulate(pd.DataFrame(rows), headers="keys", tablefmt="github", showindex=False,
                    disable_numparse=True)  # fmt: skip


# ----------------------------------------------------------------------------- step speedup


Finals = dict[str, dict[int, tuple[float, float, int, float]]]


def _finals(out: Path | Folder) -> tuple[dict[str, Any], Finals]:
    """The config.json of the run folder ``out``, and per optimizer and seed its final judged
    (validation) metric, final test metric, steps and time (on the folder's time axis)."""
    cfg = read_config(out)
    df, _, _ = read_runs(out, cfg)
    df = with_time(df, cfg, time_basis(df, out)[0])
    finals: Finals = {}
    for _, row in per_run(df, cfg.get("metric", ACCURACY)).iterrows():
        finals.setdefault(str(row["optimizer"]), {})[int(row["seed"])] = (
            float(row["judged_final"]), float(row["final"]), int(row["steps"]), float(row["time"])
        )  # fmt: skip
    return cfg, finals


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
    budget."""
    cfg, main = _finals(run_dir)
    metric = cfg.get("metric", ACCURACY)
    higher = metric["higher_is_better"]
    present = list(cfg["optimizers"])
    base = base or baseline_of(cfg["task"], present, None)
    if base is None or base not in present:
        raise ValueError(f"{run_dir} holds no run of the task's baseline ({base or 'none'})")
    per_budget = {1.0: main.get(base, {})}
    for d in budget_dirs:
        bcfg, finals = _finals(d)
        if bcfg["task"] != cfg["task"]:
            raise ValueError(f"{d} is a run of {bcfg['task']}, not of {cfg['task']}")
        per_budget[float(bcfg["train"].get("budget", 1))] = finals.get(base, {})
    cost, _ = time_basis(pd.DataFrame({"optimizer": present}), run_dir)
    base_step_s = cost[base]["hessian_step_s"] if base in cost else math.nan
    largest = max(per_budget)
    rows = []
    for opt in [o for o in present if not optimizers.first_order(o)]:
        ours = main.get(opt, {})
        if not ours:
            continue
        target = float(np.median([v[0] for v in ours.values()]))
        our_steps = float(np.median([v[2] for v in ours.values()]))
        our_time = float(np.median([v[3] for v in ours.values()]))
        speed, time_speed, at_once = [], [], 0
        for seed in sorted(per_budget[1.0]):
            points = sorted((v[seed][2], v[seed][0]) for v in per_budget.values() if seed in v)
            needed = steps_needed(points, target, higher)
            at_once += needed == points[0][0]  # reached within the baseline's own budget
            needed = needed if np.isfinite(needed) else math.inf  # not within the largest budget
            speed.append(needed / our_steps)
            time_speed.append(needed * base_step_s / our_time)

        rows.append({
            "task": cfg["task"], "AdaHessian": opt, "baseline": base,
            f"AdaHessian's final {metric['label']} (validation)": _fmt(target, metric),
            "budgets": ", ".join(f"{b:g}" for b in sorted(per_budget)),
            "step speedup": _speedup_cell(speed, at_once, largest),
            "time speedup": (
                _speedup_cell(time_speed, at_once, largest) if np.isfinite(base_step_s) else "n/a"
            ),
            "seeds": str(len(speed)),
        })  # fmt: skip
    return pd.DataFrame(rows)
