"""The ``# pytest:`` header grammar of an example script (docs/examples/README.md).

The leading comment lines of the file hold one line ``# pytest: marker, marker(args), option=value``.
Markers become real markers on the item, so ``-m``, tiers, ``CICD=1`` and hardware gating treat an
example exactly like a test. Options: ``timeout=SECONDS``, ``skip`` / ``skip_always`` (or
``skip="reason"``). The header is parsed, never evaluated, and the code below it is never read.
"""

from __future__ import annotations

import ast
import io
import math
import re
import tokenize
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..markers import NeedsError, amount

HEADER_RE = re.compile(r"#\s*pytest:(.*)$")
SKIP_OPTIONS = ("skip", "skip_always")
GRAMMAR = "expected comma-separated markers and options, e.g. '# pytest: requires_vram(24), timeout=900'"


class HeaderError(ValueError):
    """A ``# pytest:`` header that cannot be honoured; the collector adds file and line."""


@dataclass(frozen=True)
class Header:
    line: int  # 1-based line of the header in the file
    marks: tuple[pytest.MarkDecorator, ...] = ()
    timeout: float | None = None  # None: ini heavy_example_timeout_s
    skip: str | None = None  # reason, when the header says skip / skip_always


def find_header(path: Path) -> tuple[int, str] | None:
    """(line, text after ``pytest:``) of the header in the leading comment lines, or None.

    Only comments and blank lines before the first line of code are read, so a helper module with no
    header is never looked at further and never imported.
    """
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line:
                continue
            if not line.startswith("#"):
                return None
            match = HEADER_RE.match(line)
            if match:
                return lineno, match.group(1)
    return None


def _literal(node: ast.expr, what: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        raise HeaderError(f"{what}: {ast.unparse(node)!r} is not a literal (numbers, strings, "
                          "tuples, lists, dicts, True/False/None)") from None


def _items(text: str) -> list[str]:
    """The header's top-level comma-separated items (commas inside brackets or strings do not split)."""
    if not text:
        return []
    items, depth, start = [], 0, 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type != tokenize.OP:
                continue
            depth += (tok.string in ("(", "[", "{")) - (tok.string in (")", "]", "}"))
            if depth < 0:
                raise SyntaxError("unbalanced brackets")
            if tok.string == "," and depth == 0:
                items.append(text[start:tok.start[1]])
                start = tok.end[1]
    except (tokenize.TokenError, SyntaxError):
        raise HeaderError(f"cannot parse {text!r}: {GRAMMAR}") from None
    items.append(text[start:])
    if not items[-1].strip():  # a trailing comma
        items.pop()
    return items


def _parse_item(item: str, text: str) -> ast.expr | ast.keyword:
    """One item as the argument of a call, parsed (never evaluated): a marker expression or option=value."""
    try:
        call = ast.parse(f"_({item})", mode="eval").body
    except SyntaxError:
        call = None
    if isinstance(call, ast.Call) and len(call.args) + len(call.keywords) == 1:
        return call.args[0] if call.args else call.keywords[0]
    raise HeaderError(f"cannot parse {text!r}: {GRAMMAR}")


def _marker(node: ast.expr) -> pytest.MarkDecorator:
    """``name`` or ``name(literal, key=literal)`` as a marker pytest knows (or warns about)."""
    if isinstance(node, ast.Name):
        name, args, kwargs = node.id, (), {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in SKIP_OPTIONS:
        name = node.func.id
        args = tuple(_literal(a, f"arguments of {name}") for a in node.args)
        if any(k.arg is None for k in node.keywords):
            raise HeaderError(f"arguments of {name}: **kwargs is not allowed")
        kwargs = {k.arg: _literal(k.value, f"argument {k.arg} of {name}") for k in node.keywords if k.arg}
    else:
        raise HeaderError(f"{ast.unparse(node)!r} is not a marker: write a marker name, optionally "
                          "with literal arguments, e.g. requires_vram(24)")
    try:
        decorator = getattr(pytest.mark, name)  # pytest's registry check: fails under --strict-markers
    except (AttributeError, pytest.fail.Exception) as exc:
        message = exc.msg if isinstance(exc, pytest.fail.Exception) else str(exc)
        raise HeaderError(f"marker {name!r}: {message}") from None
    mark = decorator.with_args(*args, **kwargs)
    try:  # our amounts are checked here, so that a bad one is reported at the header's line
        amount(mark.mark)
    except NeedsError as exc:
        raise HeaderError(str(exc)) from None
    return mark


def _option(node: ast.keyword) -> tuple[str, float | str]:
    """``timeout=SECONDS`` or ``skip='reason'`` / ``skip_always='reason'``, validated."""
    if node.arg == "timeout":
        value = _literal(node.value, "timeout")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise HeaderError(f"timeout={ast.unparse(node.value)}: expected a positive number of seconds")
        return "timeout", float(value)
    if node.arg in SKIP_OPTIONS:
        value = _literal(node.value, node.arg)
        if not isinstance(value, str) or not value.strip():
            raise HeaderError(f"{node.arg}={ast.unparse(node.value)}: expected a reason string")
        return "skip", value.strip()
    raise HeaderError(f"unknown option {node.arg or '**'!r}: known options are timeout=SECONDS, "
                      "skip, skip_always, skip='reason'")


def parse_header(line: int, text: str) -> Header:
    """Parse the text after ``# pytest:``: markers (with literal arguments) and options, in any order.

    Without ``--strict-markers`` pytest warns about an unknown marker (and the marker still applies,
    as on a test); the collector re-issues that warning at the header's line.
    """
    text = text.strip()
    marks: list[pytest.MarkDecorator] = []
    options: dict[str, float | str] = {}
    for item in _items(text):
        node = _parse_item(item, text)
        if isinstance(node, ast.keyword):
            key, value = _option(node)
            options[key] = value
        elif isinstance(node, ast.Name) and node.id in SKIP_OPTIONS:
            options["skip"] = f"example header says {node.id}"
        else:
            marks.append(_marker(node))
    timeout, skip = options.get("timeout"), options.get("skip")
    assert timeout is None or isinstance(timeout, float)
    assert skip is None or isinstance(skip, str)
    return Header(line, tuple(marks), timeout, skip)
