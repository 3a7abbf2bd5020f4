"""Finite-difference against autograd curvature, per epoch and paired by seed, from a run folder.

For each pair (``adahessian-fd`` against ``adahessian``, ``adahessian-fd-lazy`` against
``adahessian-lazy``) present in the folder, and each epoch: the test metric of both (mean ± std
over seeds) and the paired difference (same seed: same data order and initial weights) with its
95 % Student-t interval. A difference whose interval contains 0 is within the seed spread.

Usage::

    python benchmarks/fd_vs_autograd.py runs/fd-brown-lm            # prints markdown
    python benchmarks/fd_vs_autograd.py runs/fd-brown-lm --out docs/results/x/fd-vs-autograd.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from adahessian_bench import compare, results

PAIRS = (("adahessian-fd", "adahessian"), ("adahessian-fd-lazy", "adahessian-lazy"))


def table(out: Path) -> str:
    cfg = json.loads((out / "config.json").read_text())
    metric = cfg.get("metric", results.ACCURACY)
    key, higher, scale = metric["key"], metric["higher_is_better"], float(metric["scale"])
    df, incomplete, _ = results.read_runs(out, cfg)
    lines = [
        f"# {cfg['task']}: finite-difference against autograd curvature, paired by seed",
        "",
        f"Test metric `{key}` ({'higher' if higher else 'lower'} is better"
        f"{', in %' if scale == 100 else ''}) per epoch: mean ± std over seeds, and the paired "
        "difference finite-difference minus autograd with its 95 % t interval "
        f"(`python benchmarks/fd_vs_autograd.py {out}`).",
        "",
    ]
    if incomplete:
        lines += [f"Incomplete runs, left out: {', '.join(incomplete)}", ""]
    for fd, ad in PAIRS:
        if not {fd, ad} <= set(df["optimizer"]):
            continue
        lines += [f"## {fd} against {ad}", ""]
        lines += [
            f"| epoch | {ad} | {fd} | seeds | difference | 95 % interval |",
            "|---|---|---|---|---|---|",
        ]
        for epoch, g in df.groupby("epoch"):
            per = g.assign(final=g[key] * scale)[["optimizer", "seed", "final"]]
            a, b = (per[per["optimizer"] == o]["final"] for o in (ad, fd))
            p = compare.paired(per, fd, ad)
            lines.append(
                f"| {epoch} | {a.mean():.2f} ± {a.std():.2f} | {b.mean():.2f} ± {b.std():.2f} "
                f"| {p['n']} | {p['mean']:+.2f} | [{p['low']:+.2f}, {p['high']:+.2f}] |"
            )
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    text = table(args.folder)
    if args.out:
        args.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
