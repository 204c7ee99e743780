"""Failure representations for reports the parent writes itself (a crashed or never-run test).

Built from the same classes pytest uses when it deserializes a report from another process, so
the short summary (``-rA``) and junit's ``message`` show the first line, like any failure.
"""

from __future__ import annotations

import pytest
from _pytest._code.code import ReprEntryNative, ReprExceptionInfo, ReprFileLocation, ReprTraceback


def failure_repr(item: pytest.Item, message: str) -> ReprExceptionInfo:
    lines = [line + "\n" for line in message.splitlines()]
    _, lineno, _ = item.location
    crash = ReprFileLocation(path=str(item.path), lineno=(lineno or 0) + 1, message=message.splitlines()[0])
    return ReprExceptionInfo(reprtraceback=ReprTraceback([ReprEntryNative(lines)], None, "native"),
                             reprcrash=crash)
