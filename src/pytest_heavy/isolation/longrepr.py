"""Failure representations without a crash line (a failing doctest's, a plugin's own), across the
process boundary.

pytest serializes such a representation as its text, and a report whose longrepr is a string gets
the string's first line as its short-summary message (``FAILED t.py::t.f - 019``), where in-process
the line has none (the representation has no ``reprcrash``). The child marks those reports
(``MARK_KEY``); the parent rebuilds them with a representation that prints the same text and, like
the original, has no crash line.
"""

from __future__ import annotations

from typing import Any

import pytest
from _pytest._code.code import TerminalRepr
from _pytest._io import TerminalWriter

from ..wire import PLAIN_LONGREPR_KEY as MARK_KEY


class PlainRepr(TerminalRepr):
    """The child's text of a failure representation that has no crash line."""

    def __init__(self, text: str) -> None:
        self.text = text

    def toterminal(self, tw: TerminalWriter) -> None:
        for line in self.text.splitlines():
            tw.line(line)


def mark(report: pytest.TestReport, data: dict[str, Any]) -> None:
    """In the child: mark ``data`` when its longrepr will travel as text but is no string here."""
    longrepr = report.longrepr
    if longrepr is None or isinstance(longrepr, (str, tuple)):
        return
    if getattr(longrepr, "reprcrash", None) is None and isinstance(data.get("longrepr"), str):
        data[MARK_KEY] = True


def rebuild(data: dict[str, Any]) -> pytest.TestReport | None:
    """In the parent: a marked test report, its longrepr without a crash line; None otherwise."""
    if not data.pop(MARK_KEY, False) or data.get("$report_type") != "TestReport":
        return None
    report = pytest.TestReport._from_json(data)
    report.longrepr = PlainRepr(str(report.longrepr))
    return report
