"""Hooks other plugins (or a project's conftest.py) can implement: ``pytest_heavy_*``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:  # hookspecs are read by name: the record's module is imported by enabled sessions only
    from .report import HeavyRecord


@pytest.hookspec
def pytest_heavy_child_env(config: pytest.Config, unit: str, env: dict[str, str]) -> None:
    """Adjust the environment of the child about to run ``unit`` (edit ``env`` in place).

    For example, give each of several parallel workers its own ``CUDA_VISIBLE_DEVICES``.
    """


@pytest.hookspec
def pytest_heavy_unit_start(config: pytest.Config, unit: str, method: str, nodeids: list[str]) -> None:
    """A child was started for ``unit`` with start ``method`` to run ``nodeids``."""


@pytest.hookspec
def pytest_heavy_unit_finish(config: pytest.Config, record: HeavyRecord) -> None:
    """``unit`` is finished (its row of the heavy table is ``record``), memory release included."""


@pytest.hookspec(firstresult=True)
def pytest_heavy_make_launcher(config: pytest.Config, method: str) -> object | None:
    """Return the launcher that starts children for ``method`` (``template``, ``fork`` or ``spawn``),
    or None to use pytest-heavy's own.

    The object follows ``pytest_heavy.isolation.launch.base.Launcher``: ``name``, ``start(request) ->
    Started`` and ``close()``. Modelled on pytest-xdist's ``pytest_xdist_make_scheduler``; a test suite
    can hand the controller a launcher that plays back scripted events without starting processes.
    """


@pytest.hookspec
def pytest_heavy_session_state(session: pytest.Session) -> dict[str, Any] | None:
    """In an isolated child, as its session ends: this plugin's session-level state for the parent
    (what its tests did that the plugin judges once per run: snapshots used, benchmark results), as
    plain data (str, int, float, bool, bytes, None, lists, tuples, dicts) under a key of its own."""


@pytest.hookspec
def pytest_heavy_merge_session_state(config: pytest.Config, unit: str, state: dict[str, Any]) -> None:
    """In the parent, when the child that ran ``unit`` ended: every plugin's ``pytest_heavy_session_state``
    of that child, merged (read your own key). Called before the parent's session ends."""
