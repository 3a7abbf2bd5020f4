"""``adahessian-bench``: list tasks, fetch data, run a benchmark, report on it.

    adahessian-bench list
    adahessian-bench data fetch fashion-mnist
    adahessian-bench run fmnist-resnet20 --profile quick --optimizers sgd,adam,adahessian \\
        --seeds 1 --out runs/quick
    adahessian-bench report runs/quick
    adahessian-bench sweep fmnist-resnet20 --param lr --values 0.25,0.5,1,2,4 \\
        --optimizers adahessian,adamw --seeds 2 --out runs/sweep-lr
    adahessian-bench report runs/sweep-lr

Errors end in one line on stderr and a non-zero exit status (1: data or report, 2: options or
the output folder, 130: interrupted); a refused command leaves the output folder as it was.
"""

from __future__ import annotations

import argparse
import math
import shlex
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from . import config, data, fetchers, hints, optimizers
from .tasks import TASKS

# ----------------------------------------------------------------------------- option values
# Checked by argparse (``type=``), so that a bad value ends as one line of argparse's own form,
# ``adahessian-bench run: error: argument --epochs: must be an integer >= 1, got 0``, exit code 2,
# before anything is read, trained or written.


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``low``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


def finite_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def name_list(text: str) -> list[str]:
    """A comma-separated list of names, each once (``summary --optimizers``, ``--columns``)."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no name in {text!r}: give comma-separated names")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise argparse.ArgumentTypeError(f"{', '.join(twice)} named twice in {text!r}")
    return names


def optimizer_list(text: str) -> list[str]:
    """``--optimizers``: comma-separated known names, each once."""
    names = [o.strip() for o in text.split(",") if o.strip()]
    known = ", ".join(optimizers.OPTIMIZERS)
    if not names:
        raise argparse.ArgumentTypeError(f"no optimizer named in {text!r}; known: {known}")
    for name in names:
        if not optimizers.is_known(name):
            hint = hints.did_you_mean(name, optimizers.OPTIMIZERS)
            raise argparse.ArgumentTypeError(
                f"unknown optimizer {name!r}{hint}; known: {known}, or a variant KIND-LABEL "
                "of one that the profile has a table for"
            )
        if names.count(name) > 1:
            raise argparse.ArgumentTypeError(f"{name} is named twice in {text!r}")
    return names


def device(text: str) -> str:
    """``--device``: a device that torch knows and that this machine has."""
    import torch

    try:
        d = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a torch device (e.g. cpu, cuda, cuda:1, mps)"
        ) from None
    if d.type != "cpu":
        backend: Any = getattr(torch, d.type, None)
        count = 0
        if hasattr(backend, "is_available") and backend.is_available():
            count = backend.device_count() if hasattr(backend, "device_count") else 1
        if (d.index or 0) >= count:
            have = f"{count} {d.type} device(s)" if count else f"no {d.type} device"
            raise argparse.ArgumentTypeError(
                f"{text}: this machine has {have}; use --device cpu (or leave --device out)"
            )
    return text


def toml_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return path


class Parser(argparse.ArgumentParser):
    """argparse, its errors on one line: ``PROG: error: MESSAGE`` (``--help`` gives the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def fail(args: argparse.Namespace, error: BaseException | str, code: int) -> int:
    """Print an error on stderr as argparse does (``adahessian-bench run: error: ...``)."""
    command = " ".join(c for c in (args.command, getattr(args, "action", None)) if c)
    if isinstance(error, OSError):  # the path and the reason in words, not errno's text
        error = data.os_error_text(error)
    print(f"adahessian-bench {command}: error: {error}", file=sys.stderr)
    return code


# ----------------------------------------------------------------------------- commands


def cmd_list(args: argparse.Namespace) -> int:
    print("tasks:")
    for t in TASKS.values():
        profiles = ", ".join(config.profile_names(t.name))
        print(f"  {t.name:<22} {t.description}  [profiles: {profiles}]")
    print("optimizers:")
    print("  " + ", ".join(optimizers.OPTIMIZERS))
    print("data sets (adahessian-bench data fetch NAME):")
    print("  " + ", ".join(fetchers.DATASETS) + f"  [cache: {data.cache_dir()}]")
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    try:
        path = fetchers.fetch(args.name, verify=True)
    except data.DataUnavailable as e:
        return fail(args, e, 1)
    print(f"{args.name}: {path} (checked)")
    return 0


def _resolve(args: argparse.Namespace, default_optimizers: list[str] | None = None) -> dict:
    """The resolved configuration of a `run` or `sweep` command (the options both share)."""
    import torch

    from . import train

    profile_cfg = config.load(args.task, args.profile, args.config)
    if args.optimizers is not None:
        names = args.optimizers
    elif default_optimizers is not None:
        names = default_optimizers
    else:  # the profile's, variants included, in its order
        names = list(profile_cfg["optimizers"])
    cfg = train.resolve(
        args.task,
        profile_cfg,
        args.profile if args.config is None else str(args.config),
        names,
        args.seeds,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        train_subset=args.train_subset,
        test_subset=args.test_subset,
        device=args.device,
        eval_every=args.eval_every,
    )
    if args.threads:  # once everything is checked
        torch.set_num_threads(args.threads)
    return cfg


def cmd_run(args: argparse.Namespace) -> int:
    # Imported here: `list` and `data` should not pay for importing torch's training stack.
    from . import train

    try:
        cfg = _resolve(args)
        train.run(cfg, Path(args.out), args.resume, not args.no_progress, args.command_line)
    except data.DataUnavailable as e:
        return fail(args, e, 1)
    except (ValueError, OSError) as e:  # bad options or config file, or a file problem
        return fail(args, e, 2)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from . import sweep

    try:
        # Every check before anything is trained or written.
        values = sweep.parse_values(args.param, args.values)
        adahessian_only = sweep.param(args.param).adahessian_only
        cfg = _resolve(args, [sweep.ADAHESSIAN] if adahessian_only else None)
        grid = sweep.expand(cfg, args.param, values)
        sweep.run(grid, Path(args.out), args.resume, not args.no_progress, args.command_line)
    except data.DataUnavailable as e:
        return fail(args, e, 1)
    except (ValueError, OSError) as e:
        return fail(args, e, 2)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from . import report, sweep

    try:
        if args.publish is not None:  # before anything is written
            report.check_publish_dest(Path(args.dir), Path(args.publish))
        if sweep.is_sweep(args.dir):  # a sweep folder: one table and plot over the grid
            text = sweep.make_report(Path(args.dir))
            plots: tuple[str, ...] = (sweep.plot_name(sweep.load(args.dir)["param"]),)
            if args.publish is not None:
                sweep.publish(Path(args.dir), Path(args.publish))
        else:
            text = report.make_report(Path(args.dir), target=args.target)
            plots = report.written_plots(args.dir)
            if args.publish is not None:
                report.publish(Path(args.dir), Path(args.publish))
    except report.NotWritten as e:  # a read-only folder: the report all the same
        print(e.text)
        return fail(args, f"{e}; the report is printed above", 1)
    except (ValueError, OSError) as e:  # missing or damaged files
        return fail(args, e, 1)
    print(text)
    print(f"written: {Path(args.dir) / 'report.md'}, " + ", ".join(plots))
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from . import overview

    try:
        print(overview.overview([Path(d) for d in args.dirs], [Path(d) for d in args.budgets],
                                args.optimizers, args.columns))  # fmt: skip
    except (ValueError, OSError) as e:
        return fail(args, e, 1)
    return 0


def _add_run_options(s: argparse.ArgumentParser, optimizers_help: str) -> None:
    """The options that `run` and `sweep` share: task, profile, overrides, output."""
    s.add_argument("task", choices=list(TASKS))
    s.add_argument("--optimizers", type=optimizer_list, default=None, help=optimizers_help)
    s.add_argument("--seeds", type=at_least(1), default=1, help="seeds 0..N-1 (default: 1)")
    s.add_argument("--profile", default="quick", choices=config.PROFILES,
                   help="a shipped TOML profile (default: quick)")  # fmt: skip
    s.add_argument("--config", type=toml_file, default=None, help="a TOML profile file instead")
    s.add_argument("--epochs", type=at_least(1), default=None,
                   help="override the profile's epochs (lr milestones scale along)")  # fmt: skip
    s.add_argument("--max-steps", type=at_least(1), default=None,
                   help="cap the steps per epoch")  # fmt: skip
    s.add_argument("--batch-size", type=at_least(1), default=None, help="override the batch size")
    s.add_argument("--train-subset", type=at_least(0), default=None,
                   help="train on this many examples (images: balanced over classes; 0, or more "
                        "than the data holds, = all)")  # fmt: skip
    s.add_argument("--test-subset", type=at_least(0), default=None,
                   help="evaluate on this many test examples (0, or more than there are, "
                        "= all)")  # fmt: skip
    s.add_argument("--eval-every", type=at_least(0), default=None, metavar="STEPS",
                   help="also evaluate every STEPS steps within an epoch (0: at each epoch's end "
                        "only; overrides the profile's eval_every)")  # fmt: skip
    s.add_argument("--device", type=device, default=None,
                   help="default: cuda if available, else cpu")  # fmt: skip
    s.add_argument("--threads", type=at_least(1), default=None, help="torch.set_num_threads")
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--resume", action="store_true",
                   help="continue the runs under --out from their last checkpoint")  # fmt: skip
    s.add_argument("--no-progress", action="store_true", help="no progress bars")


def parser() -> argparse.ArgumentParser:
    p = Parser(prog="adahessian-bench", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="the tasks, profiles and optimizers known")
    s.set_defaults(func=cmd_list)

    s = sub.add_parser("data", help="install a data set into the cache ($ADAHESSIAN_DATA)")
    dsub = s.add_subparsers(dest="action", required=True)
    f = dsub.add_parser("fetch", help="fetch a data set (offline from Debian packages if possible)")
    f.add_argument("name", choices=fetchers.DATASETS)
    f.set_defaults(func=cmd_data)

    s = sub.add_parser("run", help="train every optimizer and seed on a task")
    _add_run_options(s, "comma-separated (default: every optimizer of the profile)")
    s.set_defaults(func=cmd_run)

    s = sub.add_parser("sweep", help="one run per value of a hyperparameter (ablations)")
    _add_run_options(
        s,
        "comma-separated. lr: every one is swept (default: the profile's); AdaHessian-only "
        "parameters: must include adahessian, the others run once as references (default: "
        "adahessian)",
    )
    s.add_argument("--param", required=True,
                   help="lr (values multiply each optimizer's profile lr), budget (values "
                        "multiply the profile's steps, the lr schedule stretched), or "
                        "AdaHessian's hessian_power, block_size, update_interval (absolute "
                        "values)")  # fmt: skip
    s.add_argument("--values", required=True, help="comma-separated, e.g. 0.25,0.5,1,2,4")
    s.set_defaults(func=cmd_sweep)

    s = sub.add_parser(
        "report",
        help="Markdown table and plots of a run or sweep folder",
        description="Write DIR/report.md and plots, and print the report. Incomplete runs are "
        "reported as they are and named; runs of another configuration than DIR/config.json's "
        "are left out and named. If DIR cannot be written (read-only), the report is printed "
        "all the same, and the exit status is 1.",
    )
    s.add_argument("dir")
    s.add_argument("--target", type=finite_number, default=None,
                   help="target value of the task's metric, e.g. a test accuracy in [0, 1] "
                        "(default: the median final validation metric of the paper's baseline "
                        "for the task, else of the best first-order optimizer)")  # fmt: skip
    s.add_argument("--publish", metavar="DEST", default=None,
                   help="also copy the report, plots and every run's metrics, config, "
                        "environment and step costs (no checkpoints) to DEST, e.g. "
                        "docs/results/TASK-quick (a sweep: its report, plot, sweep.json, every "
                        "run's metrics and its --config profile)")  # fmt: skip
    s.set_defaults(func=cmd_report)

    s = sub.add_parser(
        "summary",
        help="one table over run folders: AdaHessian against the paper's baseline per task",
        description="Print a Markdown table with a row per AdaHessian of each run folder: its "
        "final metric against the paper's baseline for the task, paired by seed with a 95 % "
        "interval, the time to the first-order target relative to the baseline's, and the metric "
        "within the fastest first-order optimizer's time.",
    )
    s.add_argument("dirs", nargs="+", metavar="DIR")
    s.add_argument("--budgets", nargs="+", default=[], metavar="DIR",
                   help="budget sweeps (sweep --param budget) or budget runs of the tasks' "
                        "baselines: adds the step and time speedup columns (the steps and time "
                        "the baseline needs to reach each AdaHessian's final validation metric, "
                        "over the AdaHessian's)")  # fmt: skip
    s.add_argument(
        "--optimizers",
        type=name_list,
        default=None,
        metavar="NAMES",
        help="comma-separated: only the rows of these AdaHessians (e.g. adahessian)",
    )
    s.add_argument("--columns", type=name_list, default=None, metavar="NAMES",
                   help='comma-separated column headers: only these, in this order (e.g. '
                        '"task,final,per epoch,time to target")')  # fmt: skip
    s.set_defaults(func=cmd_summary)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad option (argparse has said why): its exit code
        return int(e.code or 0)
    args.command_line = shlex.join(["adahessian-bench", *argv])
    previous = _terminate_as_interrupt()
    try:
        return int(args.func(args))
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: what to do next, not a traceback
        hint = ""
        if args.command in ("run", "sweep"):
            hint = f": the runs under {args.out} can be continued with the same command"
            hint += "" if args.resume else " plus --resume"
        terminated = isinstance(e, Terminated)
        print(f"{'terminated' if terminated else 'interrupted'}{hint}", file=sys.stderr)
        return 143 if terminated else 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler or ``kill``), handled as Ctrl-C is: the runs stay resumable."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated


def _terminate_as_interrupt() -> Any:
    """Install the SIGTERM handler for this command (main thread only); the previous one."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, _raise_terminated)


if __name__ == "__main__":
    sys.exit(main())
