"""Tier selection: which tests a plain ``pytest``, ``-m slow`` or ``CICD=1`` run keeps.

- default: everything but ``slow`` (deselected, so the summary counts them);
- ``-m "not qualitative"``: the fast tier (pytest's own -m does the work);
- ``-m slow`` or ``--heavy-run-slow``: slow tests are kept;
- ``CICD=1``: qualitative tests are skipped with a reason, so CI logs show what was left out (a skip,
  not a deselection: gating.verdict decides it with the hardware rules).
"""

from __future__ import annotations

import re

import pytest

from .settings import Settings

SLOW_DESELECTED = "deselected by default (run with -m slow or --heavy-run-slow)"


def slow_is_selected(config: pytest.Config, settings: Settings) -> bool:
    """True when slow tests stay selected: --heavy-run-slow, the default turned off, or -m naming slow."""
    if settings.run_slow or not settings.skip_slow_by_default:
        return True
    return re.search(r"\bslow\b", config.option.markexpr or "") is not None


def slow_reason(config: pytest.Config, settings: Settings) -> str | None:
    """Why slow tests do not run here (doctor's line for the marker), or None when they are selected."""
    return None if slow_is_selected(config, settings) else SLOW_DESELECTED


def deselect(config: pytest.Config, items: list[pytest.Item], slow: list[pytest.Item]) -> int:
    """Drop the ``slow`` tests the tier leaves out from ``items`` in place, reporting them as
    deselected (``session.sort_items`` finds them in its one pass); how many were dropped."""
    if slow:
        config.hook.pytest_deselected(items=slow)
        dropped = set(slow)
        items[:] = [item for item in items if item not in dropped]
    return len(slow)


def summary(tr: pytest.TerminalReporter, deselected: int) -> None:
    """One line, also under ``-q`` (where the header's tier line is hidden), saying which tests the tiers
    left out, by which rule, and how to include them: pytest's own "N deselected" does not say why."""
    if not deselected:
        return
    tests = "test" if deselected == 1 else "tests"
    tr.write_line(f"pytest-heavy: {deselected} slow {tests} deselected by the default tier "
                  "(heavy_skip_slow_by_default); run only them with -m slow, or include them with "
                  "--heavy-run-slow or heavy_skip_slow_by_default = false")


def describe(config: pytest.Config, settings: Settings) -> str:
    """The tier line of the session header."""
    expr = config.option.markexpr
    parts = [f'-m "{expr}"' if expr else "default tier"]
    parts.append("slow: run" if slow_is_selected(config, settings) else "slow: deselected")
    if settings.cicd:
        parts.append("CICD=1: qualitative skipped")
    return "; ".join(parts)
