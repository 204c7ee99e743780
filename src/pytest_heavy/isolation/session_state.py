"""Session-level state that plugins gather over a whole run, from every isolated child to the parent.

Some plugins decide at the session's end from what every test did: syrupy which snapshots are
unused (failing the run, or deleting them with ``--snapshot-update``), pytest-benchmark its table.
A child's tests are not the parent's: as its session ends, each child asks its plugins for their
state (``pytest_heavy_session_state``, plain data) and sends it; the parent hands each child's to
``pytest_heavy_merge_session_state`` before its own session ends. The adapters below do this for
plugins that do not implement the hooks themselves, registered only where the plugin is active.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator, Iterator
from typing import Any

import pytest

SYRUPY_KEY = "syrupy"
BENCHMARK_KEY = "pytest-benchmark"


def gather(session: pytest.Session) -> dict[str, Any]:
    """In a child: every plugin's state, merged into one mapping (each plugin under its own key)."""
    state: dict[str, Any] = {}
    for part in session.config.hook.pytest_heavy_session_state(session=session):
        state.update(part or {})
    return state


def register_child(config: pytest.Config) -> None:
    manager = config.pluginmanager
    if manager.hasplugin("syrupy") and not manager.has_plugin("heavy-syrupy-child"):
        manager.register(SyrupyChild(), "heavy-syrupy-child")
    session = getattr(config, "_benchmarksession", None)
    if session is not None and not manager.has_plugin("heavy-benchmark-child"):
        manager.register(BenchmarkChild(session), "heavy-benchmark-child")


def register_parent(config: pytest.Config) -> None:
    manager = config.pluginmanager
    if manager.hasplugin("syrupy") and not manager.has_plugin("heavy-syrupy"):
        manager.register(SyrupyParent(), "heavy-syrupy")
    if getattr(config, "_benchmarksession", None) is not None and not manager.has_plugin("heavy-benchmark"):
        manager.register(BenchmarkParent(), "heavy-benchmark")


@contextlib.contextmanager
def _as_xdist_worker(config: pytest.Config) -> Iterator[dict[str, Any]]:
    """syrupy's own protocol for pytest-xdist: a worker publishes its report on
    ``config.workeroutput`` instead of judging unused snapshots; the controller merges them."""
    saved_env, saved_output = os.environ.get("PYTEST_XDIST_WORKER"), getattr(config, "workeroutput", None)
    os.environ["PYTEST_XDIST_WORKER"] = "pytest-heavy-child"
    output: dict[str, Any] = {}
    config.workeroutput = output  # type: ignore[attr-defined]
    try:
        yield output
    finally:
        if saved_env is None:
            os.environ.pop("PYTEST_XDIST_WORKER", None)
        else:
            os.environ["PYTEST_XDIST_WORKER"] = saved_env
        if saved_output is None:
            del config.workeroutput  # type: ignore[attr-defined]
        else:
            config.workeroutput = saved_output  # type: ignore[attr-defined]


class SyrupyChild:
    """A child's snapshots: written here (a forked child never ends a session of its own, where
    syrupy writes them), and what its tests asserted reported to the parent, which alone decides
    which snapshots are unused."""

    def pytest_heavy_session_state(self, session: pytest.Session) -> dict[str, Any] | None:
        syrupy = getattr(session.config, "_syrupy", None)
        if syrupy is None or not hasattr(syrupy, "add_worker_report"):  # syrupy < 5: no worker reports
            return None
        syrupy.flush_snapshot_write_queue()  # as in one process: no lock files, which workers leave
        with _as_xdist_worker(session.config) as output:
            syrupy.finish()
        return {SYRUPY_KEY: output} if output else None


class SyrupyParent:
    """The parent's side: each child's report joins the parent's session as a worker's would; the
    parent's own statuses join them as one more report, as syrupy keeps only workers' statuses."""

    def pytest_heavy_merge_session_state(self, config: pytest.Config, unit: str,
                                         state: dict[str, Any]) -> None:
        syrupy = getattr(config, "_syrupy", None)
        data = state.get(SYRUPY_KEY)
        if syrupy is None or not data:
            return
        if report := data.get("syrupy_report"):
            syrupy.add_worker_report(report)

    @pytest.hookimpl(wrapper=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> Generator[None, object, object]:
        syrupy = getattr(session.config, "_syrupy", None)
        if syrupy is not None and getattr(syrupy, "_worker_reports", None):
            syrupy.add_worker_report({
                "collections": {}, "num_xfails": 0,
                "selected": {nodeid: status.value for nodeid, status in syrupy._selected_items.items()}})
        return (yield)


class BenchmarkChild:
    """pytest-benchmark in a child: its results go to the parent, which alone saves them
    (``--benchmark-json``, ``--benchmark-autosave``) and shows the table. A fork starts with the
    parent's results so far: only the ones added here are this child's."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.inherited = len(session.benchmarks)
        session.json = session.save = session.autosave = None  # the parent writes them, once

    def pytest_heavy_session_state(self, session: pytest.Session) -> dict[str, Any] | None:
        results = [bench.as_dict(include_data=True) for bench in self.session.benchmarks[self.inherited:]
                   if bench and not bench.has_error]
        return {BENCHMARK_KEY: results} if results else None


class BenchmarkParent:
    """The parent's side: each child's results rebuilt as pytest-benchmark's own ``Metadata``."""

    def pytest_heavy_merge_session_state(self, config: pytest.Config, unit: str,
                                         state: dict[str, Any]) -> None:
        import types

        from pytest_benchmark.stats import Metadata

        session = getattr(config, "_benchmarksession", None)
        if session is None:
            return
        for result in state.get(BENCHMARK_KEY, ()):
            stats = result["stats"]
            fixture = types.SimpleNamespace(cprofile_stats=None, has_error=False, **{
                key: result[key] for key in ("name", "fullname", "group", "param", "params", "extra_info")})
            bench = Metadata(fixture, stats["iterations"], result["options"])
            bench.stats.data = list(stats["data"])
            session.benchmarks.append(bench)
