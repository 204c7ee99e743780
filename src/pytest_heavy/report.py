"""What pytest-heavy adds to the terminal summary."""

from __future__ import annotations

import pytest


def counted(n: int, reason: str) -> str:
    """'3 need a GPU (...)' / '1 needs a GPU (...)' / '2 CICD=1: ...'."""
    if reason.startswith("needs ") and n != 1:
        reason = "need " + reason[len("needs "):]
    return f"{n} {reason}"


def gated_summary(tr: pytest.TerminalReporter, gated: dict[str, list[str]]) -> None:
    """Tests skipped by gating, grouped by reason: a section with -rs, one line otherwise."""
    if not gated:
        return
    total = sum(len(ids) for ids in gated.values())
    chars = tr.reportchars if hasattr(tr, "reportchars") else ""
    if "s" in chars or "a" in chars or "A" in chars:
        tr.write_sep("-", "gated tests (pytest-heavy)")
        for reason, ids in sorted(gated.items(), key=lambda kv: -len(kv[1])):
            tr.write_line(counted(len(ids), reason))
    else:
        parts = [counted(len(ids), reason) for reason, ids in sorted(gated.items(), key=lambda kv: -len(kv[1]))]
        tr.write_line(f"pytest-heavy: {total} gated: {'; '.join(parts)} (-rs for details)")
