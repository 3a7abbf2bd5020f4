"""Hyperparameter sweeps: one benchmark run per value of one hyperparameter (the paper's ablations).

    adahessian-bench sweep fmnist-resnet20 --param lr --values 0.25,0.5,1,2,4 \\
        --optimizers adahessian,adamw --seeds 2 --out runs/sweep-lr
    adahessian-bench report runs/sweep-lr

Parameters (``PARAMS``):

- ``lr``: the values are multipliers of each optimizer's profile lr, and every optimizer given is
  swept over the same relative grid (the paper's learning-rate robustness experiment). Only
  ``lr`` changes: a decoupled weight decay (AdamW, AdaHessian: ``p -= lr * weight_decay * p``)
  therefore scales with it, as it does for any user of those optimizers who changes lr alone.
- ``hessian_power``, ``block_size``, ``update_interval``: AdaHessian's own; the values are
  absolute and only AdaHessian's hyperparameters change. The other optimizers given are run once,
  at their profile settings, as references.
- ``budget``: every optimizer given is trained for the value times the profile's steps (1.5: half
  as many again, the last epoch cut short), its lr schedule stretched to them (``[train]
  budget``): how many steps a baseline needs to reach a given quality.

Output folder layout::

    OUT/sweep.json              the grid: parameter, values, point folders, optimizers, command
    OUT/PARAM=VALUE/            one ordinary run folder per value (config.json, OPT-seedS/ ...)
    OUT/reference/              the reference optimizers' run (AdaHessian-only parameters)
    OUT/report.md, OUT/PARAM.png   from ``adahessian-bench report OUT``

Every grid point is made by ``train.run``, so ``--resume`` continues each point from its
checkpoints and ``adahessian-bench report OUT/PARAM=VALUE`` reports on one point alone. A sweep
into a folder of another sweep (or a run folder) is refused before anything is written, and so is
one into a folder another sweep is writing (``OUT/.lock``, as ``train.run``'s).
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from tabulate import tabulate

from . import compare, config, data, report, results  # (report: matplotlib's file-only backend)
from .report import _mean_std

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SWEEP_FILE = "sweep.json"
REFERENCE_DIR = "reference"
ADAHESSIAN = "adahessian"


@dataclass(frozen=True)
class Param:
    """A hyperparameter that can be swept, and what its values set."""

    name: str
    sets: str  # "lr": each optimizer's lr x the value; "train": the [train] key of every run;
    #            "adahessian": AdaHessian's hyperparameter (the others run once, as references)
    integer: bool = False  # the values are integers (else floats)
    log_x: bool = False  # plot against a log axis
    valid: str = "a positive number"  # the rule the values follow, for error messages

    @property
    def multiplier(self) -> bool:
        """The values multiply each optimizer's profile value (else they are absolute)."""
        return self.sets == "lr"

    @property
    def adahessian_only(self) -> bool:
        return self.sets == "adahessian"

    def check(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.name == "hessian_power":
            return 0.0 < value <= 1.0
        return value > 0


PARAMS: dict[str, Param] = {
    p.name: p
    for p in [
        Param("lr", sets="lr", log_x=True, valid="a positive multiplier of the profile's lr"),
        Param("hessian_power", sets="adahessian", valid="a number in (0, 1]"),
        Param("block_size", sets="adahessian", integer=True, log_x=True,
              valid="a positive integer"),
        Param("update_interval", sets="adahessian", integer=True, log_x=True,
              valid="a positive integer"),
        Param("budget", sets="train",
              valid="a positive multiple of the profile's steps (1.5: half as many again)"),
    ]
}  # fmt: skip


def param(name: str) -> Param:
    if name not in PARAMS:
        raise ValueError(f"unknown sweep parameter {name!r}; known: {', '.join(PARAMS)}")
    return PARAMS[name]


def parse_values(name: str, text: str) -> list[float | int]:
    """The comma-separated values of ``--values``, checked against the parameter's rule."""
    p = param(name)
    items = [s.strip() for s in text.split(",") if s.strip()]
    if not items:
        raise ValueError("--values: no values given")
    values: list[float | int] = []
    for s in items:
        try:
            v: float | int = int(s) if p.integer else float(s)
        except ValueError:
            raise ValueError(f"--values: {s!r} is not {p.valid} ({name})") from None
        if not p.check(v):
            raise ValueError(f"--values: {s!r} is not {p.valid} ({name})")
        values.append(v)
    if len(set(values)) < len(values):
        raise ValueError(f"--values: a value is repeated in {text!r}")
    check_folders(name, values)
    return values


def check_folders(name: str, values: list[float | int]) -> None:
    """ValueError if two values would share a grid point's folder (``point_dir`` keeps 6
    significant digits): the second run would replace the first."""
    seen: dict[str, float | int] = {}
    for v in values:
        folder = point_dir(name, v)
        if folder in seen:
            raise ValueError(
                f"--values: {seen[folder]!r} and {v!r} both name the folder {folder} (values are "
                "told apart by 6 significant digits): give values that differ there"
            )
        seen[folder] = v


def point_dir(name: str, value: float) -> str:
    """The folder of a grid point: ``PARAM=VALUE`` (``lr=0.5``, ``update_interval=10``)."""
    return f"{name}={value:g}"


@dataclass
class Grid:
    """A sweep expanded into run configurations (resolved configs, as ``train.run`` takes)."""

    param: Param
    values: list[float | int]
    points: list[dict[str, Any]]  # one resolved configuration per value
    swept: list[str]  # the optimizers swept
    reference: dict[str, Any] | None  # the reference optimizers' configuration, if any

    def describe(self, command: str = "") -> dict[str, Any]:
        """The content of sweep.json."""
        base = self.points[0]
        return {
            "task": base["task"],
            "profile": base["profile"],
            "param": self.param.name,
            "multiplier": self.param.multiplier,
            "values": self.values,
            "points": [
                {
                    "value": v,
                    "dir": point_dir(self.param.name, v),
                    "hyperparameters": cfg["optimizers"],
                }
                for v, cfg in zip(self.values, self.points, strict=True)
            ],
            "swept": self.swept,
            "reference": list(self.reference["optimizers"]) if self.reference else [],
            "reference_dir": REFERENCE_DIR if self.reference else None,
            "seeds": base["seeds"],
            "command": command,
        }


def expand(base: dict[str, Any], name: str, values: list[float | int]) -> Grid:
    """The run configurations of a sweep of ``name`` over ``values``, from the resolved ``base``.

    ``lr``: every optimizer of ``base`` at lr x value. AdaHessian-only parameters: AdaHessian with
    the parameter set to the value; the other optimizers of ``base`` form the reference run.
    Raises ValueError for an impossible sweep (nothing is written here)."""
    p = param(name)
    opts: dict[str, dict[str, Any]] = base["optimizers"]
    if not opts:
        raise ValueError("no optimizers to sweep")
    for v in values:
        if not p.check(v) or (p.integer and (isinstance(v, bool) or not isinstance(v, int))):
            raise ValueError(f"{v!r} is not {p.valid} ({name})")
    check_folders(name, values)
    points = []
    if p.multiplier:
        missing = [o for o, hp in opts.items() if "lr" not in hp]
        if missing:
            raise ValueError(f"the profile gives no lr for {', '.join(missing)}: nothing to scale")
        for v in values:
            cfg = copy.deepcopy(base)
            for hp in cfg["optimizers"].values():
                hp["lr"] = hp["lr"] * v
            points.append(cfg)
        return Grid(p, values, points, list(opts), None)
    if p.sets == "train":  # every optimizer given, each run with the value
        for v in values:
            cfg = copy.deepcopy(base)
            cfg["train"][name] = v
            points.append(cfg)
        return Grid(p, values, points, list(opts), None)
    if ADAHESSIAN not in opts:
        raise ValueError(
            f"{name} is a hyperparameter of AdaHessian alone: --optimizers must include "
            f"adahessian (the others given run once, as references); got {', '.join(opts)}"
        )
    for v in values:
        cfg = copy.deepcopy(base)
        cfg["optimizers"] = {ADAHESSIAN: {**opts[ADAHESSIAN], name: v}}
        points.append(cfg)
    reference = None
    others = {o: hp for o, hp in opts.items() if o != ADAHESSIAN}
    if others:
        reference = {**copy.deepcopy(base), "optimizers": copy.deepcopy(others)}
    return Grid(p, values, points, [ADAHESSIAN], reference)


def check_out(
    description: dict[str, Any], jobs: list[tuple[str, dict[str, Any]]], out: Path
) -> None:
    """Raise ValueError unless ``out`` is new or holds this sweep alone (see folders.check_out)."""
    from . import folders

    config.check_ours(out)
    if not out.exists():
        return
    if (out / "config.json").is_file() or config.run_dirs(out):
        raise ValueError(f"{out} is a run folder, not a sweep's: use another --out")
    sweep_path = out / SWEEP_FILE
    if sweep_path.is_file():
        try:
            previous = json.loads(sweep_path.read_text())
        except ValueError:
            raise ValueError(f"{sweep_path} is damaged (not JSON): {folders.START_OVER}") from None
        ours = json.loads(json.dumps(description))
        if {k: v for k, v in previous.items() if k != "command"} != {
            k: v for k, v in ours.items() if k != "command"
        }:
            raise ValueError(
                f"{sweep_path} describes another sweep than this command's: {folders.START_OVER}"
            )
    for folder, cfg in jobs:
        folders.check_out(cfg, out / folder)


def run(
    grid: Grid, out: Path, resume: bool = False, progress: bool = True, command: str = ""
) -> None:
    """Train every grid point (and the reference run) under ``out``; write ``out/sweep.json``."""
    from . import folders, train  # torch's training stack: only when something is trained
    from .distributed import world

    out = Path(out)
    description = grid.describe(command)
    jobs = [
        (point_dir(grid.param.name, v), cfg)
        for v, cfg in zip(grid.values, grid.points, strict=True)
    ]
    if grid.reference is not None:
        jobs.append((REFERENCE_DIR, grid.reference))
    # Before anything is written (a damaged data file: nothing written).
    datasets = load_data([cfg for _, cfg in jobs])
    jobs = [(folder, train.process_config(cfg)) for folder, cfg in jobs]  # as train.run's
    if world()[0] > 0:  # rank 0 alone checks, locks and writes the folder
        _run(jobs, out, resume, progress, command, grid.param.name, datasets)
        return
    check_out(description, jobs, out)  # before the lock: a refused call creates nothing
    with folders.hold(out):
        check_out(description, jobs, out)
        config.mark(out, "sweep")
        data.atomic_write_text(out / SWEEP_FILE, json.dumps(description, indent=2) + "\n")
        _run(jobs, out, resume, progress, command, grid.param.name, datasets)


def data_key(cfg: dict[str, Any]) -> str:
    """What ``Task.load(cfg)`` may depend on: all of ``cfg`` but its optimizers."""
    return json.dumps({k: v for k, v in cfg.items() if k != "optimizers"}, sort_keys=True)


def load_data(cfgs: list[dict[str, Any]]) -> list[Any]:
    """The data of each configuration (``Task.load``), loaded once per distinct data
    configuration (``data_key``). The points of a grid differ in their optimizers' hyperparameters
    only, so today a sweep loads its data once; a point that changed the data would load its own."""
    from .tasks import TASKS

    loaded: dict[str, Any] = {}
    for cfg in cfgs:
        if data_key(cfg) not in loaded:
            loaded[data_key(cfg)] = TASKS[cfg["task"]].load(cfg)
    return [loaded[data_key(cfg)] for cfg in cfgs]


def _run(
    jobs: list[tuple[str, dict[str, Any]]],
    out: Path,
    resume: bool,
    progress: bool,
    command: str,
    name: str,
    datasets: list[Any],  # the data of each job
) -> None:
    from tqdm import tqdm

    from . import train

    with tqdm(
        total=len(jobs),
        desc=f"sweep {name}",
        unit="point",
        position=0,
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        for (folder, cfg), dataset in zip(jobs, datasets, strict=True):
            bar.set_postfix_str(folder)
            tqdm.write(f"== {folder}")
            train.run(cfg, out / folder, resume, progress, command, dataset)
            bar.update(1)


# ----------------------------------------------------------------------------- report


def is_sweep(folder: str | Path) -> bool:
    return (Path(folder) / SWEEP_FILE).is_file()


def plot_name(param_name: str) -> str:
    return f"{param_name}.png"


def _per_run(df: pd.DataFrame, key: str, higher: bool) -> pd.DataFrame:
    """Final and best value of the metric per (optimizer, seed), and whether the run diverged.

    A diverged run has no value (NaN), nor has a non-finite one: the table gives the mean over the
    others and counts the diverged, and the plot leaves them out."""
    rows = []
    for (opt, seed), g in df.groupby(["optimizer", "seed"]):
        g = g.sort_values("epoch")
        g = g.assign(**{key: g[key].where(np.isfinite(g[key]))})
        outcome = compare.run_outcome(g, key, higher)
        valid = "valid_" + key.removeprefix("test_")  # the metric a value is chosen by, if any
        outcome["valid_final"] = g[valid].iloc[-1] if valid in g else np.nan
        if outcome["diverged"]:
            outcome.update(final=np.nan, best=np.nan, valid_final=np.nan)
        rows.append(
            {"optimizer": opt, "seed": seed, **outcome, "wall_time_s": g["wall_time_s"].iloc[-1]}
        )
    return pd.DataFrame(rows)


def _cell(r: pd.DataFrame, column: str, fmt: str, scale: float) -> str:
    text = _mean_std(r[column], fmt, scale)
    n_div = int(r["diverged"].sum())
    return f"{text} ({n_div}/{len(r)} diverged)" if n_div else text


TOLERANCE = 0.02  # "near the best": a final metric within 2 % (relative) of the optimizer's best
NEAR = f"within {TOLERANCE * 100:g} % of its best"


def sensitivity(
    per_point: list[tuple[float, pd.DataFrame]],
    swept: list[str],
    higher: bool,
    fmt: str,
    scale: float,
) -> pd.DataFrame:
    """How much each swept optimizer cares about the swept value: its best value (by the mean
    final metric over the seeds that did not diverge; among the values where none diverged, if
    any), the mean final there, the worst mean over the grid ("diverged" if every seed of a value
    diverged), the values within ``TOLERANCE`` (relative) of the best with no seed diverged, and
    how many runs diverged; and the value a tuning would choose, by the mean final validation
    metric (where the task evaluates one; never by the test metric), with that mean."""
    rows = []
    for opt in swept:
        chosen = _chosen(per_point, opt, higher, fmt, scale)
        means: dict[float, float] = {}
        clean: set[float] = set()
        diverged = total = 0
        for v, r in per_point:
            ro = r[r["optimizer"] == opt]
            if not len(ro):
                continue
            total += len(ro)
            n_div = int(ro["diverged"].sum())
            diverged += n_div
            # Scaled before the mean, as the grid table's cells are, so both print the same digits.
            f = ro["final"].dropna().to_numpy(dtype=float) * scale
            means[v] = float(f.mean()) if len(f) else math.nan
            if not n_div:
                clean.add(v)
        finite = {v: m for v, m in means.items() if math.isfinite(m)}
        if not finite:
            rows.append({"optimizer": opt, "best value": "n/a", "final there": "n/a",
                         "worst": "diverged" if means else "n/a", NEAR: "none",
                         "diverged runs": f"{diverged}/{total}", **chosen})  # fmt: skip
            continue
        # The best among the values no seed diverged at (else among all): a survivor's good
        # metric beside a diverged seed is no recommendation.
        candidates = [v for v in finite if v in clean] or list(finite)
        best_v = max(candidates, key=lambda v: finite[v] if higher else -finite[v])
        best = finite[best_v]
        if len(finite) < len(means):
            worst_text = "diverged"
        else:
            worst = min(finite.values()) if higher else max(finite.values())
            worst_text = format(worst, fmt)
        bound = best * (1 - TOLERANCE) if higher else best * (1 + TOLERANCE)
        ok = {v: (m >= bound if higher else m <= bound) for v, m in finite.items()}
        near = sorted(v for v in clean if ok.get(v, False))
        rows.append(
            {
                "optimizer": opt,
                "best value": f"{best_v:g}",
                "final there": format(best, fmt),
                "worst": worst_text,
                NEAR: ", ".join(f"{v:g}" for v in near) or "none",
                "diverged runs": f"{diverged}/{total}",
                **chosen,
            }
        )
    return pd.DataFrame(rows)


CHOSEN = "chosen by validation"


def _chosen(
    per_point: list[tuple[float, pd.DataFrame]], opt: str, higher: bool, fmt: str, scale: float
) -> dict[str, str]:
    """The value with the best mean final validation metric of ``opt`` (seeds that diverged left
    out; "n/a" without a validation metric), and that mean."""
    means = {}
    for v, r in per_point:
        if "valid_final" not in r:
            continue
        f = r.loc[r["optimizer"] == opt, "valid_final"].dropna().to_numpy(dtype=float) * scale
        if len(f):
            means[v] = float(f.mean())
    if not means:
        return {CHOSEN: "n/a"}
    best = max(means, key=lambda v: means[v] if higher else -means[v])
    return {CHOSEN: f"{best:g} (validation {format(means[best], fmt)})"}


def read_point(
    point: Path,
) -> tuple[dict[str, Any], pd.DataFrame | None, list[str], list[str]]:
    """A grid point's configuration (its config.json), the metrics of its finished runs (None if
    none has finished), its incomplete runs and those left out (``results.read_runs``); for the
    sweep's report and its publish alike. FileNotFoundError and ValueError as ``read_runs`` and
    ``read_json`` raise them."""
    point_cfg = results.read_config(point)
    df, inc, lo = results.read_runs(point, point_cfg)
    if results.PROGRESS in inc:  # read_runs' progress report: the epochs of unfinished runs
        return point_cfg, None, [r for r in inc if r != results.PROGRESS], lo
    return point_cfg, df, inc, lo


@dataclass(frozen=True)
class Notes:
    """A sweep report's notes on its folders: the points not run yet, those with no finished run,
    the incomplete runs and the runs left out."""

    missing: tuple[str, ...] = ()
    unfinished: tuple[str, ...] = ()
    incomplete: tuple[str, ...] = ()
    left_out: tuple[str, ...] = ()

    def __add__(self, other: Notes) -> Notes:
        return Notes(
            self.missing + other.missing,
            self.unfinished + other.unfinished,
            self.incomplete + other.incomplete,
            self.left_out + other.left_out,
        )

    def lines(self) -> list[str]:
        """The report's lines on them."""
        lines = []
        if self.missing:
            lines.append(f"- Not run yet: {', '.join(self.missing)}.")
        if self.unfinished:
            lines.append(f"- No run finished yet (left out): {', '.join(self.unfinished)}.")
        return lines + results.notes(list(self.incomplete), list(self.left_out))


@dataclass(frozen=True)
class SweepRuns:
    """What a sweep folder holds, each run summarised by ``_per_run``."""

    # (value, runs) of each point with a finished run
    points: tuple[tuple[float, pd.DataFrame], ...]
    reference: pd.DataFrame | None  # the references' runs; None if none has finished
    cfg: dict[str, Any]  # config.json of the first point with a finished run
    env: dict[str, Any]  # and its env.json
    metric: dict[str, Any]  # cfg's metric
    swept: list[str]  # sweep.json's optimizers swept
    references: list[str]  # and those run once, at their profile settings
    notes: Notes


def _read_folder(
    out: Path, folder: str
) -> tuple[tuple[dict[str, Any], pd.DataFrame] | None, Notes]:
    """The configuration and metrics of the finished runs of a point (or of the references),
    None if none has finished; and the notes on the folder."""
    try:
        point_cfg, df, inc, lo = read_point(out / folder)
    except FileNotFoundError:
        return None, Notes(missing=(folder,))
    except ValueError:
        return None, Notes(left_out=(f"{folder} (its config.json is damaged)",))
    notes = Notes(
        incomplete=tuple(f"{folder}/{r}" for r in inc),
        left_out=tuple(f"{folder}/{r}" for r in lo),
    )
    if df is None:  # a point none of whose runs has finished: not in the table
        return None, notes + Notes(unfinished=(folder,))
    return (point_cfg, df), notes


def read_sweep(out: Path, sweep: dict[str, Any]) -> SweepRuns:
    """Every grid point of the sweep folder ``out`` (``sweep``: its sweep.json) and its
    references; FileNotFoundError if no point has a finished run."""
    points: list[tuple[float, pd.DataFrame]] = []
    notes = Notes()
    first: tuple[dict[str, Any], dict[str, Any]] | None = None  # the first such point's cfg, env
    for point in sweep["points"]:
        read, more = _read_folder(out, point["dir"])
        notes += more
        if read is not None:
            points.append((point["value"], read[1]))
            if first is None:
                first = (read[0], results.read_env(out / point["dir"]))
    if first is None:
        raise FileNotFoundError(
            f"no grid point of {out} has a finished run: run the sweep first (or let it finish)"
        )
    cfg, env = first
    metric = cfg.get("metric", results.ACCURACY)
    swept, references = sweep["swept"], sweep["reference"]
    key, higher = metric["key"], metric["higher_is_better"]
    per_point = tuple((v, _per_run(df, key, higher)) for v, df in points)
    reference = None
    if sweep.get("reference_dir") and (out / sweep["reference_dir"]).is_dir():
        read, more = _read_folder(out, sweep["reference_dir"])
        notes += more
        if read is not None:
            reference = _per_run(read[1], key, higher)
    return SweepRuns(per_point, reference, cfg, env, metric, swept, references, notes)


def _value_header(p: Param) -> str:
    return "lr multiplier" if p.multiplier else p.name


def grid_table(sweep: dict[str, Any], p: Param, runs: SweepRuns) -> pd.DataFrame:
    """One row per value: per optimizer swept its final and best epoch's metric (and its lr, in
    an lr sweep)."""
    fmt, scale = runs.metric["fmt"], runs.metric["scale"]
    hp_by_value = {pt["value"]: pt["hyperparameters"] for pt in sweep["points"]}
    rows = []
    for v, r in runs.points:
        row: dict[str, str] = {_value_header(p): f"{v:g}"}
        for opt in runs.swept:
            ro = r[r["optimizer"] == opt]
            if p.multiplier:
                row[f"{opt} lr"] = f"{hp_by_value[v][opt]['lr']:.4g}"
            row[f"{opt} final"] = _cell(ro, "final", fmt, scale) if len(ro) else "n/a"
            row[f"{opt} best"] = _cell(ro, "best", fmt, scale) if len(ro) else "n/a"
        rows.append(row)
    return pd.DataFrame(rows)


def reference_table(runs: SweepRuns) -> pd.DataFrame | None:
    """The references' final and best metric; None if none has finished."""
    ref = runs.reference
    if ref is None:
        return None
    fmt, scale = runs.metric["fmt"], runs.metric["scale"]
    return pd.DataFrame(
        [
            {
                "reference (profile settings)": opt,
                "final": _cell(ref[ref["optimizer"] == opt], "final", fmt, scale),
                "best": _cell(ref[ref["optimizer"] == opt], "best", fmt, scale),
            }
            for opt in runs.references
            if (ref["optimizer"] == opt).any()
        ]
    )


XLABELS = {
    "lr": "lr multiplier (x each optimizer's profile lr)",
    "hessian_power": "Hessian power k",
    "block_size": "block size (2-D weights)",
    "update_interval": "Hessian update interval (steps)",
    "budget": "step budget (x the profile's steps)",
}


def _draw_swept(ax: Axes, runs: SweepRuns) -> None:
    """Each swept optimizer's final metric against the value, mean ± std over seeds."""
    scale = runs.metric["scale"]
    for opt in runs.swept:
        xs, means, stds = [], [], []
        for v, r in sorted(runs.points, key=lambda t: t[0]):
            f = r.loc[r["optimizer"] == opt, "final"].dropna().to_numpy(dtype=float) * scale
            if len(f):
                xs.append(v)
                means.append(f.mean())
                stds.append(f.std(ddof=1) if len(f) > 1 else 0.0)
        if xs:
            ax.errorbar(xs, means, yerr=stds, marker="o", markersize=4, capsize=3, label=opt)


def _draw_references(ax: Axes, runs: SweepRuns) -> None:
    """Each reference's final metric: a dashed line, its std over seeds a band."""
    ref, scale = runs.reference, runs.metric["scale"]
    if ref is None:
        return
    colors = iter(["0.35", "tab:gray", "tab:olive", "tab:cyan", "tab:pink"])
    for opt in runs.references:
        f = ref.loc[ref["optimizer"] == opt, "final"].dropna()
        if len(f):
            m = scale * float(f.mean())
            s = scale * float(f.std(ddof=1)) if len(f) > 1 else 0.0
            c = next(colors, "0.5")
            ax.axhline(m, linestyle="--", color=c, label=f"{opt} (profile settings)")
            if s:
                ax.axhspan(m - s, m + s, color=c, alpha=0.12)


def plot(sweep: dict[str, Any], p: Param, runs: SweepRuns) -> Figure:
    """The final metric against the swept value, mean ± std over seeds, and the references."""
    import matplotlib.pyplot as plt  # after report's import chose the file-only backend

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    _draw_swept(ax, runs)
    _draw_references(ax, runs)
    values = sorted(v for v, _ in runs.points)
    if p.log_x:
        ax.set_xscale("log", base=2 if p.integer else 10)
    ax.set_xticks(values)
    ax.set_xticklabels([f"{v:g}" for v in values])
    ax.minorticks_off()
    ax.set_xlabel(XLABELS[p.name])
    ax.set_ylabel(f"final {runs.metric['label']}")
    seeds = sweep["seeds"]
    ax.set_title(
        f"{sweep['task']} ({sweep['profile']} profile): {p.name} sweep, {len(seeds)} seed(s)",
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def _grid_line(sweep: dict[str, Any], p: Param, refs: list[str]) -> str:
    """The report's line on the grid: the values, what they set, the references."""
    what = {
        "lr": "each optimizer's profile lr times the multiplier (other hyperparameters unchanged)",
        "train": "every optimizer trained for the value times the profile's steps, its lr "
        "schedule stretched to them",
        "adahessian": f"AdaHessian's {p.name} set to the value (its other hyperparameters as in "
        "the profile)",
    }[p.sets]
    return f"- Grid: {p.name} = {', '.join(f'{v:g}' for v in sweep['values'])}: {what}." + (
        f" References at their profile settings: {', '.join(refs)}." if refs else ""
    )


def _intro(sweep: dict[str, Any], p: Param, runs: SweepRuns) -> list[str]:
    """The report's title and its lines on the command, machine, training, grid, seeds and
    notes."""
    label, higher, seeds = runs.metric["label"], runs.metric["higher_is_better"], sweep["seeds"]
    tc = runs.cfg["train"]
    all_runs = [r for _, r in runs.points] + (
        [runs.reference] if runs.reference is not None else []
    )
    total_s = float(sum(r["wall_time_s"].sum() for r in all_runs))
    return [
        f"# {sweep['task']}, {sweep['profile']} profile: {p.name} sweep",
        "",
        f"- Command: `{sweep.get('command') or runs.env.get('command', '?')}`",
        f"- Machine: {report.machine(runs.env)}",
        report.training_line(tc),
        _grid_line(sweep, p, runs.references),
        (
            f"- Mean ± std over seeds {', '.join(map(str, seeds))}"
            if len(seeds) > 1
            else f"- One seed ({seeds[0]}): no spread over seeds"
        )
        + f". Final: the last epoch's {label}; best: the best epoch's ("
        + ("higher" if higher else "lower")
        + f" is better). Training + evaluation time of all runs: {total_s / 60:.1f} min.",
        *runs.notes.lines(),
    ]


def _github(table: pd.DataFrame) -> str:
    return tabulate(
        table, headers="keys", tablefmt="github", showindex=False, disable_numparse=True
    )


def _sensitivity_lines(p: Param, runs: SweepRuns) -> list[str]:
    """The sensitivity table (``sensitivity``) and the sentence above it."""
    m = runs.metric
    sens = sensitivity(list(runs.points), runs.swept, m["higher_is_better"], m["fmt"], m["scale"])
    return [
        f"Sensitivity: per optimizer, the {_value_header(p)} with the best mean final "
        f"{m['label']}, the worst mean over the grid, and the values whose mean is within "
        f"{TOLERANCE * 100:g} % (relative) of the best with no seed diverged; and the value a "
        "tuning chooses: the best mean final validation metric (the test metric never chooses).",
        "",
        _github(sens),
        "",
    ]


def _write(out: Path, fig: Figure, plot_file: str, text: str) -> None:
    """Save the plot and the report into ``out``; ``report.NotWritten`` if it cannot."""
    import matplotlib.pyplot as plt

    try:
        fig.savefig(out / plot_file)
        data.atomic_write_text(out / "report.md", text)
    except OSError as e:
        raise report.NotWritten(out, e, text) from None
    finally:
        plt.close(fig)


def make_report(out: str | Path) -> str:
    """Write ``out/report.md`` and ``out/PARAM.png`` for the sweep folder ``out``; return the
    Markdown."""
    out = Path(out)
    sweep = load(out)
    p = param(sweep["param"])
    runs = read_sweep(out, sweep)
    table, ref_table = grid_table(sweep, p, runs), reference_table(runs)
    fig = plot(sweep, p, runs)
    lines = [*_intro(sweep, p, runs), "", _github(table), ""]
    if len(runs.points) > 1:
        lines += _sensitivity_lines(p, runs)
    if ref_table is not None and len(ref_table):
        lines += [_github(ref_table), ""]
    lines += [f"![final {runs.metric['label']} vs {p.name}]({plot_name(p.name)})", ""]
    text = "\n".join(lines)
    _write(out, fig, plot_name(p.name), text)
    return text


def publish(out: str | Path, dest: str | Path) -> list[Path]:
    """Copy a reported sweep folder's results to ``dest`` (``docs/results/sweep-TASK-PARAM``): the
    report, its plot and ``sweep.json``; under ``dest/metrics`` the per-epoch metrics of the runs
    the report reads, the finished ones (``POINT_OPT-seedS.jsonl``, the point's folder with ``=``
    as ``-``: ``lr-0.5_adamw-seed0``),
    the first point's resolved configuration and environment; and, for a sweep of a ``--config``
    profile file that still exists, that file as ``profile.toml``. No checkpoint. Returns the
    files written."""
    out, dest = Path(out), Path(dest)
    sw = load(out)
    if not (out / "report.md").is_file():
        raise FileNotFoundError(f"{out}/report.md is missing: run `adahessian-bench report` first")
    copies = [(out / name, dest / name) for name in ("report.md", plot_name(sw["param"]))]
    copies.append((out / SWEEP_FILE, dest / SWEEP_FILE))
    folders = [pt["dir"] for pt in sw["points"]]
    if sw.get("reference_dir"):
        folders.append(sw["reference_dir"])
    first = next((f for f in folders if (out / f / "config.json").is_file()), None)
    if first is not None:
        for name in ("config.json", "env.json"):
            copies.append((out / first / name, dest / "metrics" / name))
        profile = results.read_json(out / first / "config.json").get("profile", "")
        if str(profile).endswith(".toml") and Path(profile).is_file():
            copies.append((Path(profile), dest / "profile.toml"))
    for folder in folders:
        try:  # the runs the sweep's report reads: finished ones
            _, df, _, _ = read_point(out / folder)
        except (FileNotFoundError, ValueError):
            continue
        if df is None:
            continue
        for run in results.reported_runs(df):
            name = f"{folder.replace('=', '-')}_{run}.jsonl"
            copies.append((out / folder / run / "metrics.jsonl", dest / "metrics" / name))
    return report.copy_files(copies)


def load(folder: str | Path) -> dict[str, Any]:
    """The sweep.json of a sweep folder."""
    sweep: dict[str, Any] = results.read_json(Path(folder) / SWEEP_FILE)
    return sweep
