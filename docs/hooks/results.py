"""MkDocs hook: results tables come from the committed result files, never copied by hand.

Two directives, each an HTML comment on a line of its own (invisible where the Markdown is read
raw, e.g. on GitHub, where the file it names is one click away):

``<!-- include-result: docs/results/DIR/report.md -->``
    The file's content in place of the line: without its ``#`` title, its headings moved under
    the heading the directive sits below, its relative links and images rewritten to point where
    they pointed from the file, indented like the directive (so it can sit in an admonition or
    a collapsible block, where its headings become bold lines and stay out of the page's toc).
    An optional ``lines=A-B`` (``A-`` to the end) keeps only those lines of it.

``<!-- result-folders -->``
    A table of every folder and file under ``docs/results/``: its title (its report's first
    heading) and links to its report and notes.

A missing file or bad directive fails the build (``PluginError``), as a broken link does under
``--strict``. Files included this way are Markdown pages of their own too (``not_in_nav``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath
from typing import Any

from mkdocs.exceptions import PluginError

DIRECTIVE = re.compile(
    r"^(?P<indent>[ \t]*)<!-- include-result: (?P<path>\S+)(?: lines=(?P<a>\d+)-(?P<b>\d*))? -->$"
)
FOLDERS = re.compile(r"^<!-- result-folders -->$")
HEADING = re.compile(r"^(?P<hashes>#{1,6})(?P<rest>\s.*)$")
LINK = re.compile(r"(?P<head>!?\[[^\]]*\]\()(?P<target>[^)\s]+)(?P<tail>[^)]*\))")
FENCE = re.compile(r"^\s*(```|~~~)")


def _root(config: Any) -> Path:
    return Path(config["config_file_path"]).resolve().parent


def _included(root: Path, docs: Path, page_src: str, line: re.Match[str], level: int) -> list[str]:
    """The lines that replace one ``include-result`` directive of page ``page_src``."""
    rel = line["path"]
    path = (root / rel).resolve()
    if not path.is_file() or docs not in path.parents:
        raise PluginError(f"{page_src}: include-result: {rel} is not a file under {docs.name}/")
    lines = path.read_text(encoding="utf-8").rstrip("\n").split("\n")
    if line["a"]:
        first, last = int(line["a"]), int(line["b"]) if line["b"] else len(lines)
        if not 1 <= first <= last <= len(lines):
            raise PluginError(f"{page_src}: include-result: {rel} has no lines {first}-{last}")
        lines = lines[first - 1 : last]
    elif lines and lines[0].startswith("# "):
        lines = lines[1:]
    # Headings: the file's highest level goes one below the page's enclosing heading.
    levels, fenced = [], False
    for text in lines:
        fenced ^= bool(FENCE.match(text))
        if not fenced and (m := HEADING.match(text)):
            levels.append(len(m["hashes"]))
    shift = level + 1 - min(levels) if levels else 0
    # Links: relative to the included file, rewritten relative to the page.
    page_dir = PurePosixPath(page_src).parent
    file_dir = PurePosixPath(path.relative_to(docs).as_posix()).parent

    def relink(m: re.Match[str]) -> str:
        target = m["target"]
        if re.match(r"^([a-z]+:|#|/)", target):
            return m.group(0)
        new = os.path.relpath(str(file_dir / target), str(page_dir or "."))
        return f"{m['head']}{PurePosixPath(new).as_posix()}{m['tail']}"

    out, fenced = [], False
    for text in lines:
        fenced ^= bool(FENCE.match(text))
        if not fenced:
            if (m := HEADING.match(text)) and line["indent"]:  # in a block: no toc entries
                text = f"**{m['rest'].strip()}**"
            elif m:
                text = "#" * min(6, len(m["hashes"]) + shift) + m["rest"]
            text = LINK.sub(relink, text)
        out.append(line["indent"] + text if text else text)
    return ["", *out, ""]


def _folders(docs: Path, page_src: str) -> list[str]:
    """A table of everything under docs/results, linked relative to the page."""
    results = docs / "results"
    page_dir = PurePosixPath(page_src).parent

    def link(target: Path) -> str:
        rel = os.path.relpath(target.relative_to(docs).as_posix(), str(page_dir or "."))
        return PurePosixPath(rel).as_posix()

    rows = ["| result | what it is | pages |", "|---|---|---|"]
    for entry in sorted(results.iterdir()):
        if entry.is_dir():
            pages = [p for p in ("report.md", "README.md", "notes.md") if (entry / p).is_file()]
            pages += sorted(
                p.name
                for p in entry.glob("*.md")
                if p.name not in {"report.md", "README.md", "notes.md"}
            )
            if not pages:
                continue
            title = _title(entry / pages[0])
            cells = ", ".join(f"[{p}]({link(entry / p)})" for p in pages)
            rows.append(f"| `{entry.name}/` | {title} | {cells} |")
        elif entry.suffix == ".md":
            rows.append(f"| `{entry.name}` | {_title(entry)} | [{entry.name}]({link(entry)}) |")
    return ["", *rows, ""]


def _title(path: Path) -> str:
    for text in path.read_text(encoding="utf-8").split("\n"):
        if text.startswith("#"):
            return text.lstrip("#").strip().replace("|", "\\|")
    return ""


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    if "<!-- include-result:" not in markdown and "<!-- result-folders -->" not in markdown:
        return markdown
    root, docs = _root(config), Path(config["docs_dir"]).resolve()
    src = page.file.src_uri
    out, level, fenced = [], 0, False
    for text in markdown.split("\n"):
        fenced ^= bool(FENCE.match(text))
        if not fenced and (h := HEADING.match(text)):
            level = len(h["hashes"])
        if not fenced and (m := DIRECTIVE.match(text)):
            out += _included(root, docs, src, m, level)
        elif not fenced and FOLDERS.match(text):
            out += _folders(docs, src)
        elif text.strip().startswith("<!-- include-result:") and not fenced:
            raise PluginError(f"{src}: a malformed include-result directive: {text.strip()}")
        else:
            out.append(text)
    return "\n".join(out)
