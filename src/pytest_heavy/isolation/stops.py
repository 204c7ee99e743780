"""The session's stop rules, as a number a child can apply on its own.

A child must stop after the same test the session would have stopped after in one process. Telling
it to stop once the parent replayed the failure comes too late (the child has run on meanwhile), so
each child is handed the number of failures it may still report before the session's rules end the
run, and counts them itself like ``--maxfail``: ``-x``/``--maxfail`` and ``--sw``/``--sw-skip``.
"""

from __future__ import annotations

import pytest


def failures_left(session: pytest.Session) -> int:
    """Failures a child may report before a stop rule ends the session; 0: no rule applies."""
    limits = []
    maxfail = session.config.getoption("maxfail") or 0
    if maxfail:
        limits.append(max(maxfail - session.testsfailed, 1))
    stepwise = session.config.pluginmanager.get_plugin("stepwiseplugin")
    if stepwise is not None:  # --sw stops at the next failure; --sw-skip lets its first one pass
        limits.append(2 if stepwise.skip else 1)
    return min(limits, default=0)
