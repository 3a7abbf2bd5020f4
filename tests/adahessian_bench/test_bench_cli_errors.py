"""Bad input to the command line: one line of error that names the culprit and says what to do, a
non-zero exit code, no traceback, and no file written or changed (run folder, data cache)."""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from adahessian_bench import cli, config, data_images, train
from adahessian_bench.tasks import TASKS

TASK = "fmnist-resnet20"
TRAIN_IMAGES = data_images.FMNIST_FILES["train_images"]
TEST_LABELS = data_images.FMNIST_FILES["test_labels"]

# A small valid profile; each config case below changes one thing in it.
GOOD_TOML = f"""task = "{TASK}"
[train]
epochs = 1
batch_size = 16
milestones = [1]
gamma = 0.5
[optimizers.sgd]
lr = 0.05
"""


@dataclass
class Case:
    argv: list[str]  # "{out}", "{cfg}" and "{tmp}" are filled in
    says: list[str]  # each in the one line of error
    code: int = 2
    toml: str | None = None  # the content of {cfg}
    damage: str | None = None  # a Fashion-MNIST file of the cache to damage: see _damage
    marks: list[pytest.MarkDecorator] = field(default_factory=list)
    # Files to put under the test's folder, or the environment to set, before the command runs
    # (the folder's snapshot is taken after): prepare(tmp_path, monkeypatch)
    prepare: Callable[[Path, pytest.MonkeyPatch], None] | None = None


def _run(*extra: str) -> list[str]:
    return ["run", TASK, *extra, "--out", "{out}", "--no-progress"]


def _config(toml: str, *says: str) -> Case:
    return Case(_run("--config", "{cfg}", "--optimizers", "sgd"), ["{cfg}", *says], toml=toml)


def _sweep(*extra: str) -> list[str]:
    return ["sweep", TASK, *extra, "--out", "{out}", "--no-progress"]


# Small profiles of the MovieLens and language-model tasks, for the checks of their own keys.
MOVIELENS_TOML = """task = "movielens-dlrm"
[train]
epochs = 1
batch_size = 64
schedule = "constant"
[data]
split = "random"
split_seed = 0
[optimizers.adam]
lr = 0.001
"""
LM_TOML = """task = "brown-lm"
[train]
epochs = 1
batch_size = 4
bptt = 8
schedule = "constant"
[model]
vocab = 100
[optimizers.adam]
lr = 0.001
"""


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
REPAIR = "`adahessian-bench data fetch fashion-mnist` repairs it"

CASES = {
    # run: option values
    "run-epochs-0": Case(_run("--epochs", "0"), ["argument --epochs", "integer >= 1, got 0"]),
    "run-epochs-not-integer": Case(
        _run("--epochs", "2.5"), ["--epochs", "integer >= 1, got '2.5'"]
    ),
    "run-seeds-0": Case(_run("--seeds", "0"), ["argument --seeds", "integer >= 1, got 0"]),
    "run-max-steps-0": Case(_run("--max-steps", "0"), ["argument --max-steps", ">= 1, got 0"]),
    "run-batch-size-0": Case(_run("--batch-size", "0"), ["argument --batch-size", ">= 1, got 0"]),
    "run-train-subset-negative": Case(
        _run("--train-subset", "-10"), ["argument --train-subset", "integer >= 0, got -10"]
    ),
    "run-test-subset-not-a-number": Case(
        _run("--test-subset", "all"), ["argument --test-subset", "integer >= 0, got 'all'"]
    ),
    "run-train-subset-not-balanced": Case(
        _run("--train-subset", "15"), ["train_subset 15", "multiple of the 10 classes"]
    ),
    "run-eval-every-negative": Case(
        _run("--eval-every", "-1"), ["argument --eval-every", "integer >= 0, got -1"]
    ),
    "run-threads-negative": Case(_run("--threads", "-1"), ["argument --threads", ">= 1, got -1"]),
    "run-optimizers-none": Case(
        _run("--optimizers", ","), ["argument --optimizers", "no optimizer named", "known: sgd"]
    ),
    "run-optimizers-misspelt": Case(
        _run("--optimizers", "sgd,adamm"),
        ["argument --optimizers", "'adamm'", "did you mean adam?", "known: sgd, adam"],
    ),
    "run-optimizers-twice": Case(
        _run("--optimizers", "sgd,sgd"), ["--optimizers", "sgd is named twice"]
    ),
    "run-optimizer-not-in-profile": Case(
        ["run", "brown-lm", "--optimizers", "sgd", "--out", "{out}"],
        ["brown-lm-quick.toml has no [optimizers.sgd]", "choose --optimizers among", "adamw"],
    ),
    "run-device-unknown": Case(
        _run("--device", "tpu9"), ["argument --device", "'tpu9' is not a torch device"]
    ),
    "run-device-cuda-absent": Case(
        _run("--device", "cuda"),
        ["argument --device", "no cuda device", "use --device cpu"],
        marks=[NO_CUDA],
    ),
    "run-task-unknown": Case(
        ["run", "fmnist", "--out", "{out}"], ["argument task", "invalid choice: 'fmnist'"]
    ),
    "run-out-missing": Case(["run", TASK], ["required: --out"]),
    # run --config: the profile file
    "config-missing-file": Case(
        _run("--config", "{tmp}/absent.toml"), ["argument --config", "no such file", "absent.toml"]
    ),
    "config-malformed-toml": _config(GOOD_TOML.replace("[1]", "[1"), "line 6"),
    "config-top-level-key-misspelt": _config(
        GOOD_TOML.replace("[train]", "[trian]"), "trian: unknown key (did you mean train?)"
    ),
    "config-train-key-misspelt": _config(
        GOOD_TOML.replace("epochs = 1", "epoch = 1"),
        "[train] epoch: unknown key (did you mean epochs?)",
        "known: epochs, batch_size",
    ),
    "config-train-value-of-another-kind": _config(
        GOOD_TOML.replace("epochs = 1", 'epochs = "1"'),
        "[train] epochs: must be an integer >= 1, got '1'",
    ),
    "config-eval-every-negative": _config(
        GOOD_TOML.replace("epochs = 1", "epochs = 1\neval_every = -5"),
        "[train] eval_every",
        "an integer >= 0",
    ),
    "config-train-key-missing": _config(
        GOOD_TOML.replace("batch_size = 16\n", ""), "[train] has no batch_size (required)"
    ),
    "config-model-key-unknown": _config(
        GOOD_TOML + "[model]\nwidth = 2\n", "[model] width: unknown key", "known: depth"
    ),
    "config-model-value-impossible": _config(
        GOOD_TOML + "[model]\ndepth = 21\n", "[model]", "6n+2", "21"
    ),
    "config-optimizer-misspelt": _config(
        GOOD_TOML + "[optimizers.adahesian]\nlr = 0.1\n",
        "[optimizers.adahesian]",
        "did you mean adahessian?",
        "known: sgd",
    ),
    "config-hyperparameter-misspelt": _config(
        GOOD_TOML + "momentun = 0.9\n",
        "[optimizers.sgd] momentun: unknown key",
        "did you mean momentum?",
        "known: lr, momentum",
    ),
    "config-hyperparameter-out-of-range": _config(
        GOOD_TOML.replace("lr = 0.05", "lr = -0.05"),
        "[optimizers.sgd] lr:",
        "Invalid learning rate",
    ),
    # sweep
    "sweep-values-not-positive": Case(
        _sweep("--param", "lr", "--values", "0,1"), ["--values", "'0' is not a positive multiplier"]
    ),
    "sweep-values-none": Case(
        _sweep("--param", "lr", "--values", ","), ["--values", "no values given"]
    ),
    "sweep-param-unknown": Case(
        _sweep("--param", "lrr", "--values", "1"), ["unknown sweep parameter 'lrr'", "known: lr"]
    ),
    "sweep-epochs-0": Case(
        _sweep("--param", "lr", "--values", "1", "--epochs", "0"),
        ["argument --epochs", ">= 1, got 0"],
    ),
    # report
    "report-target-nan": Case(
        ["report", "{out}", "--target", "nan"], ["argument --target", "finite number"]
    ),
    "report-target-word": Case(
        ["report", "{out}", "--target", "high"], ["argument --target", "finite number, got 'high'"]
    ),
    # data fetch
    "data-fetch-unknown": Case(
        ["data", "fetch", "fmnist"], ["argument name", "invalid choice: 'fmnist'", "fashion-mnist"]
    ),
    # damaged data files: found before anything is written
    "run-data-truncated": Case(
        _run("--max-steps", "1"),
        [TRAIN_IMAGES, "not a whole gzip file", REPAIR],
        code=1,
        damage="truncate",
    ),
    "run-data-altered": Case(
        _run("--max-steps", "1"),
        [TEST_LABELS, "does not match its SHA-256", REPAIR],
        code=1,
        damage="alter",
    ),
    "run-data-not-gzip": Case(
        _run(), [TRAIN_IMAGES, "not a whole gzip file", REPAIR], code=1, damage="junk"
    ),
    "sweep-data-truncated": Case(
        _sweep("--param", "lr", "--values", "1"), [TRAIN_IMAGES, REPAIR], code=1, damage="truncate"
    ),
    # output folders (never written among files the harness did not make)
    "run-out-holds-a-users-files": Case(
        _run("--max-steps", "1"),
        [
            "--out {out} holds files that adahessian-bench did not write (env.json, "
            "step_cost.json)",
            "use a new or empty folder",
        ],
        prepare=lambda tmp, mp: _files(tmp / "out", "env.json", "step_cost.json"),
    ),
    "run-out-a-home-folder": Case(
        _run("--max-steps", "1"),
        ["holds files that adahessian-bench did not write (.bashrc, Documents, notes.txt)"],
        prepare=lambda tmp, mp: _files(tmp / "out", ".bashrc", "Documents/a.txt", "notes.txt"),
    ),
    "sweep-out-holds-a-users-files": Case(
        _sweep("--param", "lr", "--values", "1"),
        ["--out {out} holds files that adahessian-bench did not write (env.json)"],
        prepare=lambda tmp, mp: _files(tmp / "out", "env.json"),
    ),
    "run-out-a-file": Case(
        _run("--max-steps", "1"),
        ["--out {out} is a file, not a folder: use another --out"],
        prepare=lambda tmp, mp: _files(tmp, "out"),
    ),
    "run-out-under-a-file": Case(
        ["run", TASK, "--max-steps", "1", "--out", "{tmp}/notes/out", "--no-progress"],
        [
            "--out {tmp}/notes/out cannot be created",
            "a part of the path is a file, not a folder",
            "use another --out",
        ],
        prepare=lambda tmp, mp: _files(tmp, "notes"),
    ),
    "run-out-parent-read-only": Case(
        _run("--max-steps", "1"),
        ["--out {out} cannot be created: {out}: permission denied; use another --out"],
        prepare=lambda tmp, mp: _refuse_writes(mp, tmp / "out"),
    ),
    "sweep-out-parent-read-only": Case(
        _sweep("--param", "lr", "--values", "1"),
        ["--out {out} cannot be created", "permission denied"],
        prepare=lambda tmp, mp: _refuse_writes(mp, tmp / "out"),
    ),
    "sweep-values-name-one-folder": Case(
        _sweep("--param", "lr", "--values", "0.5,1,1.0000001"),
        ["--values: 1.0 and 1.0000001 both name the folder lr=1", "differ there"],
    ),
    "sweep-values-name-one-folder-hessian-power": Case(
        _sweep("--param", "hessian_power", "--values", "0.5,0.50000004"),
        ["both name the folder hessian_power=0.5"],
    ),
    # summary
    "summary-a-sweep-folder": Case(
        ["summary", "{out}"],
        ["{out} is a sweep folder", "`adahessian-bench report {out}` reports a sweep"],
        code=1,
        prepare=lambda tmp, mp: _files(tmp / "out", "sweep.json"),
    ),
    "summary-one-folder-twice": Case(
        ["summary", "{out}", "{out}/../out"],
        ["{out} and {out}/../out are the same folder: name it once"],
        code=1,
        prepare=lambda tmp, mp: _files(tmp / "out", "config.json"),
    ),
    # the data cache ($ADAHESSIAN_DATA) cannot take the data
    "data-fetch-cache-is-a-file": Case(
        ["data", "fetch", "fashion-mnist"],
        [
            "the data cache cannot take fashion-mnist: {tmp}/cache-file/fashion-mnist: a part of "
            "the path is a file",
            "point ADAHESSIAN_DATA at a folder you can write",
        ],
        code=1,
        prepare=lambda tmp, mp: _cache_at(mp, _files(tmp, "cache-file")),
    ),
    "run-cache-is-a-file": Case(
        _run("--max-steps", "1"),
        ["the data cache cannot take fashion-mnist", "a part of the path is a file"],
        code=1,
        prepare=lambda tmp, mp: _cache_at(mp, _files(tmp, "cache-file")),
    ),
    "data-fetch-cache-read-only": Case(
        ["data", "fetch", "fashion-mnist"],
        [
            "the data cache cannot take fashion-mnist",
            "permission denied",
            "point ADAHESSIAN_DATA at a folder you can write (now: {tmp}/read-only)",
        ],
        code=1,
        prepare=lambda tmp, mp: _read_only_cache(mp, tmp / "read-only"),
    ),
    "run-cache-read-only": Case(
        _run("--max-steps", "1"),
        [
            "the data cache cannot take fashion-mnist: {tmp}/read-only/fashion-mnist: permission "
            "denied"
        ],
        code=1,
        prepare=lambda tmp, mp: _read_only_cache(mp, tmp / "read-only"),
    ),
    # [data] and [model] values that need no data: refused before the data is fetched
    "run-movielens-split-unknown": Case(
        ["run", "movielens-dlrm", "--config", "{cfg}", "--out", "{out}", "--no-progress"],
        ["{cfg}: [data] split 'temprol' is not one of random, temporal", "did you mean temporal?"],
        toml=MOVIELENS_TOML.replace('"random"', '"temprol"'),
    ),
    "run-movielens-split-seed-negative": Case(
        ["run", "movielens-dlrm", "--config", "{cfg}", "--out", "{out}", "--no-progress"],
        ["[data] split_seed must be an integer >= 0, got -1"],
        toml=MOVIELENS_TOML.replace("split_seed = 0", "split_seed = -1"),
    ),
    "run-lm-vocab-too-large": Case(
        ["run", "brown-lm", "--config", "{cfg}", "--out", "{out}", "--no-progress"],
        ["{cfg}: [model] vocab 20000 is not in [2, 10000]"],
        toml=LM_TOML.replace("vocab = 100", "vocab = 20000"),
    ),
    "run-lm-vocab-one-word": Case(
        ["run", "brown-lm", "--config", "{cfg}", "--out", "{out}", "--no-progress"],
        ["[model] vocab 1 is not in [2, 10000]"],
        toml=LM_TOML.replace("vocab = 100", "vocab = 1"),
    ),
}


def _files(folder: Path, *names: str) -> Path:
    """Files (and the folders they are in) under ``folder``, each holding a line of text."""
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text("a user's own file\n")
    return folder / names[0] if len(names) == 1 else folder


def _cache_at(mp: pytest.MonkeyPatch, path: Path) -> None:
    mp.setenv("ADAHESSIAN_DATA", str(path))


def _refuse_writes(mp: pytest.MonkeyPatch, path: Path) -> None:
    """Creating ``path`` fails as it does under a read-only parent folder (the tests run as root,
    whom file modes do not stop)."""
    mkdir = Path.mkdir

    def refuse(self: Path, *args: object, **kwargs: object) -> None:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        mkdir(self, *args, **kwargs)  # type: ignore[arg-type]

    mp.setattr(Path, "mkdir", refuse)


def _read_only_cache(mp: pytest.MonkeyPatch, cache: Path) -> None:
    """$ADAHESSIAN_DATA at an empty folder where nothing can be created (as ``_refuse_writes``)."""
    cache.mkdir()
    _cache_at(mp, cache)
    _refuse_writes(mp, cache / "fashion-mnist")


@pytest.fixture
def cache(fmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data cache ($ADAHESSIAN_DATA) of links to the real Fashion-MNIST files, and no other
    source to fetch from (so a damaged file cannot be repaired behind the test's back)."""
    d = tmp_path / "cache"
    (d / "fashion-mnist").mkdir(parents=True)
    for name in data_images.FMNIST_FILES.values():
        (d / "fashion-mnist" / name).symlink_to(fmnist_dir / name)
    monkeypatch.setenv("ADAHESSIAN_DATA", str(d))
    monkeypatch.setattr(data_images, "SYSTEM_FMNIST_DIR", tmp_path / "absent")
    return d


def _damage(cache: Path, how: str) -> None:
    """Replace one cached file (a link) by a damaged copy."""
    name = TEST_LABELS if how == "alter" else TRAIN_IMAGES
    path = cache / "fashion-mnist" / name
    payload = path.read_bytes()
    path.unlink()
    if how == "truncate":
        payload = payload[: len(payload) // 2]
    elif how == "alter":  # still a valid gzip file of the right size: only its content differs
        raw = bytearray(gzip.decompress(payload))
        raw[-1] = (raw[-1] + 1) % 10
        payload = gzip.compress(bytes(raw))
    else:
        payload = b"not a gzip file\n"
    path.write_bytes(payload)


def snapshot(root: Path) -> dict[str, tuple]:
    """Every path under ``root``: its kind, size, mtime and content hash (a link: its target)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if p.is_symlink():
                out[str(p.relative_to(root))] = ("link", os.readlink(p))
            elif p.is_dir():
                out[str(p.relative_to(root))] = ("dir", st.st_mtime_ns)
            else:
                digest = hashlib.sha256(p.read_bytes()).hexdigest()
                out[str(p.relative_to(root))] = ("file", st.st_size, st.st_mtime_ns, digest)
    return out


def _prepare(case: Case, tmp_path: Path, cache: Path) -> tuple[list[str], list[str]]:
    """The case's files, and its argv and expected phrases with the paths filled in."""
    if case.toml is not None:
        (tmp_path / "profile.toml").write_text(case.toml)
    if case.damage:
        _damage(cache, case.damage)
    paths = {"{out}": str(tmp_path / "out"), "{cfg}": str(tmp_path / "profile.toml"),
             "{tmp}": str(tmp_path)}  # fmt: skip

    def fill(s: str) -> str:
        for k, v in paths.items():
            s = s.replace(k, v)
        return s

    return [fill(a) for a in case.argv], [fill(s) for s in case.says]


def _check_one_line_error(err: str, argv: list[str], says: list[str]) -> None:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    command = " ".join(argv[:2] if argv[0] == "data" else argv[:1])
    assert lines[0].startswith(f"adahessian-bench {command}: error: "), err
    for phrase in says:
        assert phrase in lines[0], f"{phrase!r} not in {lines[0]!r}"


@pytest.mark.parametrize(
    "case", [pytest.param(c, id=name, marks=c.marks) for name, c in CASES.items()]
)
def test_bad_input_is_one_line_of_error_and_changes_nothing(
    case: Case,
    tmp_path: Path,
    cache: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if case.prepare is not None:
        case.prepare(tmp_path, monkeypatch)
    argv, says = _prepare(case, tmp_path, cache)
    before = snapshot(tmp_path)
    assert cli.main(argv) == case.code
    _check_one_line_error(capsys.readouterr().err, argv, says)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    "name", ["run-epochs-0", "config-train-key-misspelt", "run-data-truncated"]
)
def test_bad_input_through_the_installed_command(name: str, tmp_path: Path, cache: Path) -> None:
    """The same in a process of its own: nothing reaches the top level as a traceback."""
    case = CASES[name]
    argv, says = _prepare(case, tmp_path, cache)
    before = snapshot(tmp_path)
    env = {**os.environ, "ADAHESSIAN_DATA": str(cache), "TQDM_DISABLE": "1"}
    cmd = [sys.executable, "-c", "import sys; from adahessian_bench.cli import main; "
           "sys.exit(main())", *argv]  # fmt: skip
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == case.code, done.stderr
    _check_one_line_error(done.stderr, argv, says)
    assert done.stdout == ""
    assert snapshot(tmp_path) == before


def test_data_fetch_repairs_a_damaged_file_and_says_so(
    fmnist_dir: Path, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    _damage(cache, "truncate")
    monkeypatch.setattr(data_images, "SYSTEM_FMNIST_DIR", fmnist_dir)  # the source to repair from
    assert cli.main(["data", "fetch", "fashion-mnist"]) == 0
    out = capsys.readouterr().out
    assert f"repairing {cache / 'fashion-mnist' / TRAIN_IMAGES}: not a whole gzip file" in out
    repaired = cache / "fashion-mnist" / TRAIN_IMAGES
    assert repaired.read_bytes() == (fmnist_dir / TRAIN_IMAGES).read_bytes()
    assert data_images.load_fashion_mnist(cache / "fashion-mnist").x_train.shape == (60000, 28, 28)
    # A second fetch finds nothing to repair and changes nothing.
    before = snapshot(tmp_path)
    assert cli.main(["data", "fetch", "fashion-mnist"]) == 0
    assert "repairing" not in capsys.readouterr().out
    assert snapshot(tmp_path) == before


def test_data_fetch_without_a_source_keeps_the_damaged_file_and_fails(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _damage(cache, "alter")
    monkeypatch.setattr(data_images.shutil, "which", lambda name: None)  # no apt-get

    def no_network(url: str, dest: Path, timeout: float = 60.0) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(data_images, "_download", no_network)
    before = snapshot(tmp_path)
    assert cli.main(["data", "fetch", "fashion-mnist"]) == 1
    captured = capsys.readouterr()
    assert f"repairing {cache / 'fashion-mnist' / TEST_LABELS}" in captured.out
    assert captured.err.startswith("adahessian-bench data fetch: error: Fashion-MNIST is not")
    assert "Traceback" not in captured.err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("task", list(TASKS))
def test_every_shipped_profile_passes_the_checks(task: str) -> None:
    """The keys each task declares (``Task.model_keys`` ...) cover its shipped profiles."""
    for profile in config.profile_names(task):
        cfg = config.load(task, profile)
        resolved = train.resolve(task, cfg, profile, list(cfg["optimizers"]), 1)
        assert list(resolved["optimizers"]) == list(cfg["optimizers"])


def test_a_config_file_may_cap_the_steps_and_the_command_line_overrides_it(tmp_path: Path) -> None:
    cfg = config.load(TASK, "quick")
    cfg["train"]["max_steps"] = 5
    assert train.resolve(TASK, cfg, "quick", ["sgd"], 1)["train"]["max_steps"] == 5
    assert train.resolve(TASK, cfg, "quick", ["sgd"], 1, max_steps=2)["train"]["max_steps"] == 2
