"""Griffe extension: the library's docstrings, written for ``help()`` and Sphinx, as Markdown.

The docstrings use Google-style sections (``Args:``, ``Returns:``, ``Raises:``) with a few reST
constructs in the text. mkdocstrings renders docstrings as Markdown, so before they are parsed
this extension rewrites:

* ``:math:`x``` as inline math ``\\(x\\)`` and a ``.. math::`` block as a ``$$`` block (an
  ``aligned`` environment when it holds ``&`` or ``\\\\``), both for ``pymdownx.arithmatex``;
* ``:class:``, ``:func:``, ``:meth:``, ``:mod:``, ``:attr:``, ``:data:`` roles as cross-references
  to the object they name, resolved in the docstring's scope: a link where the object is on a
  page of the site, plain code otherwise (an optional reference never fails the build);
* a paragraph ending in ``::`` followed by an indented block as a fenced Python code block.

Nothing in the library changes: the source keeps its docstrings as they are.
"""

from __future__ import annotations

import html
import re
import textwrap
from typing import Any

import griffe

ROLE = re.compile(r":(?P<role>math|class|func|meth|mod|attr|data|obj|exc):`(?P<text>[^`]+)`")
XREF_ROLES = {"class", "func", "meth", "mod", "attr", "data", "obj", "exc"}


def _resolve(obj: griffe.Object, target: str) -> str | None:
    """The full path of ``target`` as written in ``obj``'s docstring, or None."""
    target = target.lstrip("~")
    if target.startswith("."):  # relative to the module's package: `.functional`
        module = obj if obj.is_module else obj.module
        package = module.parent if module.parent is not None else module
        target = f"{package.path}{target}"
    candidates = [target]
    scope: Any = obj
    head = target.partition(".")[0]
    while scope is not None:  # the object's own scope, then its parents'
        if head in getattr(scope, "members", {}):
            candidates.append(f"{scope.path}.{target}")
        scope = scope.parent
    candidates.append(f"adahessian.{target}")
    for path in candidates:
        try:
            found = obj.modules_collection[path]
        except (KeyError, ValueError, griffe.AliasResolutionError, griffe.CyclicAliasError):
            continue
        try:
            return found.path if not found.is_alias else found.target_path
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):  # pragma: no cover
            return path
    return None


def _role(obj: griffe.Object, match: re.Match[str]) -> str:
    role, text = match["role"], match["text"]
    if role == "math":
        return f"\\({text}\\)"
    shown = text.lstrip("~.")
    if text.startswith("~"):
        shown = shown.rsplit(".", 1)[-1]
    if role in {"func", "meth"} and not shown.endswith(")"):
        shown += "()"
    path = _resolve(obj, text)
    code = f"<code>{html.escape(shown)}</code>"
    if path is None:
        return f"`{shown}`"
    return f'<autoref identifier="{path}" optional>{code}</autoref>'


def _math_block(lines: list[str]) -> list[str]:
    body = textwrap.dedent("\n".join(lines)).strip("\n")
    if "&" in body or "\\\\" in body:
        body = f"\\begin{{aligned}}\n{body}\n\\end{{aligned}}"
    return ["", "$$", *body.split("\n"), "$$", ""]


def _blocks(text: str) -> str:
    """``.. math::`` blocks and ``::`` literal blocks as Markdown blocks."""
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        is_math = stripped == ".. math::"
        is_code = stripped.endswith("::") and not is_math
        if not (is_math or is_code):
            out.append(line)
            i += 1
            continue
        indent = len(line) - len(line.lstrip())
        j, body = i + 1, []
        while j < len(lines) and (
            not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent
        ):
            body.append(lines[j])
            j += 1
        while body and not body[-1].strip():
            body.pop()
            j -= 1
        if not body:  # "::" with no block after it: not a literal block
            out.append(line)
            i += 1
            continue
        pad = " " * indent
        if is_math:
            out += [pad + b if b else b for b in _math_block(body)]
        else:
            lead = line.rstrip()[:-1]  # "Usage::" -> "Usage:"; "::" alone -> ""
            if lead.strip():
                out.append(lead)
            code = textwrap.dedent("\n".join(body)).strip("\n")
            out += ["", pad + "```python", *[pad + c if c else c for c in code.split("\n")]]
            out += [pad + "```", ""]
        i = j
    return "\n".join(out)


def to_markdown(obj: griffe.Object, text: str) -> str:
    """``text``, a docstring of ``obj``, with its reST constructs written in Markdown."""
    return ROLE.sub(lambda m: _role(obj, m), _blocks(text))


class SphinxToMarkdown(griffe.Extension):
    """Rewrite every docstring of the loaded package before mkdocstrings parses it."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        self._walk(pkg, set())

    def _walk(self, obj: griffe.Object, seen: set[str]) -> None:
        if obj.path in seen:
            return
        seen.add(obj.path)
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj, obj.docstring.value)
        for member in obj.members.values():
            if isinstance(member, griffe.Object):  # aliases are walked where they are defined
                self._walk(member, seen)
