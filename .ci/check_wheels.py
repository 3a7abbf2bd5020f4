"""Check the two wheels of this repository, from a scratch environment that holds torch and the
library wheel only (``make wheels`` sets it up and runs this with its Python).

- The library wheel (``adahessian``) holds ``adahessian/`` and its metadata only, and requires
  torch alone; installed, it imports, reports the version of its metadata, and one AdaHessian
  step on a small model changes the parameters. It installs no command: ``adahessian-bench``
  belongs to the harness's wheel.
- The harness wheel (``adahessian_bench``) holds ``adahessian_bench/`` (with its profiles), owns
  the ``adahessian-bench`` command and requires exactly this version of the library.

Usage: ``python .ci/check_wheels.py WHEEL_DIR``; exits 1 with the reasons if a check fails.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
import sys
import sysconfig
import warnings
import zipfile
from pathlib import Path


def problems(wheels: Path) -> list[str]:
    # torch's own warnings in an environment without NumPy, and about create_graph=True.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
    warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")
    import torch

    import adahessian

    found: list[str] = []
    (lib,) = wheels.glob("adahessian-[0-9]*.whl")
    (bench,) = wheels.glob("adahessian_bench-[0-9]*.whl")
    version = importlib.metadata.version("adahessian")
    if adahessian.__version__ != version or f"-{version}-" not in lib.name:
        found.append(f"adahessian.__version__ {adahessian.__version__} is not {lib.name}'s")
    if f"-{version}-" not in bench.name:
        found.append(f"the harness wheel {bench.name} is not version {version}")

    names = zipfile.ZipFile(lib).namelist()
    stray = [n for n in names if not n.startswith(("adahessian/", f"adahessian-{version}.dist"))]
    if stray:
        found.append(f"{lib.name} holds files outside adahessian/: {stray[:5]}")
    requires = importlib.metadata.requires("adahessian") or []
    if [r for r in requires if "extra ==" not in r] != ["torch>=2.1"]:
        found.append(f"the library requires more than torch: {requires}")
    entry_points = [e.name for e in importlib.metadata.distribution("adahessian").entry_points]
    scripts = Path(sysconfig.get_path("scripts"))
    if entry_points or (scripts / "adahessian-bench").exists() or shutil.which("adahessian-bench"):
        found.append(f"the library wheel installs a command: {entry_points}")
    if importlib.util.find_spec("adahessian_bench") is not None:
        found.append("adahessian_bench is importable beside the library wheel alone")

    bench_zip = zipfile.ZipFile(bench)
    bench_names = bench_zip.namelist()
    profiles = [n for n in bench_names if n.startswith("adahessian_bench/configs/")]
    if not any(n.endswith(".toml") for n in profiles):
        found.append(f"{bench.name} lacks the profiles (adahessian_bench/configs/*.toml)")
    if [n for n in bench_names if n.startswith("adahessian/")]:
        found.append(f"{bench.name} holds the library's files too")
    meta = next(n for n in bench_names if n.endswith(".dist-info/METADATA"))
    text = bench_zip.read(meta).decode()
    if f"Requires-Dist: adahessian=={version}" not in text:
        found.append(f"{bench.name} does not require adahessian=={version}")
    points = next(n for n in bench_names if n.endswith(".dist-info/entry_points.txt"))
    if "adahessian-bench = adahessian_bench.cli:main" not in bench_zip.read(points).decode():
        found.append(f"{bench.name} does not own the adahessian-bench command")

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    opt = adahessian.AdaHessian(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = model(torch.randn(16, 4)).pow(2).mean()
    loss.backward(create_graph=True)
    opt.step()
    moved = all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    if not moved or opt.state_dict()["adahessian"]["hessian_updates"] != 1:
        found.append("one AdaHessian step did not update every parameter with a Hessian")
    return found


def main() -> int:
    found = problems(Path(sys.argv[1]))
    for problem in found:
        print(f"wheel check: {problem}", file=sys.stderr)
    if not found:
        print("wheels: both built; the library installed with torch alone and took a step")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
