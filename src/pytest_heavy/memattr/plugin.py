"""The memory-attribution concern: options, per-test measuring, limits, and what the parent keeps.

Wherever a test runs (an isolated child, or the pytest process), ``Measure`` reads the process tree at
the test's setup start, call end and teardown end and keeps the peak in between. The figures ride to
the parent on the teardown report as the attribute ``heavy_memory``: pytest's report serialization
carries unknown attributes both ways (``TestReport(**extra)``), so nothing new crosses the wire, and
``user_properties`` (hence junit) stay exactly those of an in-process run.

Measuring costs nothing unless asked: ``--heavy-report``, ``--heavy-report-html`` or
``--heavy-find-leaks`` turn it on for every test (children learn it from ``PYTEST_HEAVY_MEMORY``), and
a ``heavy_limit_memory`` marker turns it on for its own test.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any

import pytest

from .. import wire
from ..state import Run
from . import limits

if TYPE_CHECKING:  # the sampler (psutil, NVML) is imported only once a test is measured
    from .sampler import Reading, TestMonitor

ATTR = "heavy_memory"  # the teardown report's attribute holding a test's figures
INTERVAL_S = 0.1  # the sampling thread's period in children, as the parent's TreeMonitor
POINTS = ("setup_start", "call_end", "teardown_end")
MEASURE_NAME = "heavy-memattr"


def register(config: pytest.Config, run: Run) -> None:
    config.addinivalue_line("markers", f"{limits.MARKER}(rss, vram): {limits.HELP}")
    find_leaks = run.settings.find_leaks  # settings.load has turned isolation off for it
    asked = bool(run.settings.report_path or run.settings.report_html or find_leaks)
    measure = Measure(run, asked)
    if asked or run.settings.child:  # else its per-test hooks wait for a test with a limit
        config.pluginmanager.register(measure, MEASURE_NAME)
    if not run.settings.child:
        config.pluginmanager.register(LimitCheck(measure), "heavy-memattr-limits")
        if asked:
            run.report_extra["tests"] = measure.tests
        if find_leaks:
            from . import leaks

            finder = config.stash[leaks.FINDER] = leaks.LeakFinder(run)
            run.report_extra["leaks"] = finder.rows
            measure.leak_lines = finder.lines
            config.pluginmanager.register(finder, "heavy-leaks")
            config.pluginmanager.register(leaks, "heavy-leaks-probe")  # its module-scope fixture


class LimitCheck:
    """In the parent, at collection: every limit marker well-formed (a usage error names the test), and
    the measuring hooks registered when a selected test has one (``Measure`` is not otherwise, unless
    figures were asked for). A forked child inherits the registration; spawned ones always register."""

    def __init__(self, measure: Measure) -> None:
        self.measure = measure

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        if limits.check(items) and not config.pluginmanager.is_registered(self.measure):
            config.pluginmanager.register(self.measure, MEASURE_NAME)


@dataclasses.dataclass
class Current:
    """The test being measured in this process."""

    start: float
    setup_start: Reading
    limit: limits.Limit | None
    call_end: Reading | None = None


class Measure:
    """Per-test figures and limits in whichever process runs the test; the parent's list of figures."""

    def __init__(self, run: Run, asked: bool) -> None:
        self.run = run
        self.parent_asked = asked
        self.tests: list[dict[str, Any]] = []  # parent: one entry per measured test, in finishing order
        self.leak_lines: list[str] = []  # --heavy-find-leaks' lines, for the HTML report
        self._outcomes: dict[str, str] = {}
        self._pid = -1
        self._asked = False
        self._monitor: TestMonitor | None = None
        self._current: dict[str, Current] = {}

    # --- in the process that runs the test ---------------------------------------------------------

    def _here(self) -> None:
        """Per process: a fork of the parent inherits this object, not its thread nor its decision."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._monitor = None
        self._current = {}
        child = wire.in_child()
        self._asked = os.environ.get(wire.MEMORY_ENV) == "1" if child else self.parent_asked

    def monitor(self) -> TestMonitor:
        if self._monitor is None:
            from .sampler import TestMonitor

            self._monitor = TestMonitor(self.run.gpu(), INTERVAL_S, in_parent=not wire.in_child())
        return self._monitor

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> Generator[None, None, None]:
        self._here()
        limit = limits.of(item)  # validated at collection
        if self._asked or limit is not None:
            monitor = self.monitor()
            self._current[item.nodeid] = Current(time.time(), monitor.open_window(), limit)
        return (yield)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(self, item: pytest.Item,
                                  call: pytest.CallInfo[None]) -> Generator[None, pytest.TestReport,
                                                                             pytest.TestReport]:
        report = yield
        current = self._current.get(item.nodeid)
        if current is None or self._monitor is None:
            return report
        if call.when == "call":
            current.call_end = self._monitor.mark()
            if current.limit is not None:
                enforce(report, current.limit, self._monitor.window_peak())
        elif call.when == "teardown":
            end = self._monitor.mark()
            setattr(report, ATTR, figures(current, end, self._monitor))
            del self._current[item.nodeid]
        return report

    def pytest_unconfigure(self) -> None:
        if self._monitor is not None and self._pid == os.getpid():
            self._monitor.stop()
            self._monitor = None

    # --- in the parent -------------------------------------------------------------------------------

    def pytest_heavy_child_env(self, config: pytest.Config, unit: str, env: dict[str, str]) -> None:
        if self.parent_asked:
            env[wire.MEMORY_ENV] = "1"

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if self.run.settings.child or not self.parent_asked:
            return
        from ..report import outcome_key  # here: a session that measures nothing never imports report

        known = self._outcomes.get(report.nodeid, "passed")
        if report.when == "call" or (report.when == "setup" and not report.passed):
            self._outcomes[report.nodeid] = outcome_key(report)
        elif report.when == "teardown" and report.failed and known == "passed":
            self._outcomes[report.nodeid] = "error"
        data = getattr(report, ATTR, None)
        if report.when == "teardown" and isinstance(data, dict):
            self.tests.append({"nodeid": report.nodeid, "module": report.nodeid.split("::", 1)[0],
                               "outcome": self._outcomes.pop(report.nodeid, "passed"),
                               "process": "parent" if data.get("pid") == os.getpid() else "child", **data})

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        path = self.run.settings.report_html
        if path and not self.run.settings.child:
            from . import html

            html.write(path, self.tests, self.run, self.leak_lines)


def enforce(report: pytest.TestReport, limit: limits.Limit, peak: Reading) -> None:
    """Fail a passing call whose peak went over the limit; note it on a call that failed anyway."""
    lines = limits.exceeded(limit, peak)
    if not lines or report.skipped or hasattr(report, "wasxfail"):
        return
    message = f"{limits.MARKER}: " + "; ".join(lines) + " (measured from setup start to call end)"
    if report.passed:
        report.outcome = "failed"
        report.longrepr = message
    else:
        report.sections.append((f"{limits.MARKER}", message))


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def figures(current: Current, end: Reading, monitor: TestMonitor) -> dict[str, Any]:
    """The JSON-ready figures of one test (schema in docs/memory.md: 'Per-test figures')."""
    peak = monitor.window_peak()
    points = {"setup_start": current.setup_start, "call_end": current.call_end, "teardown_end": end}
    rss = {name: _r(r.rss_mib) if r is not None else None for name, r in points.items()}
    rss["peak"] = _r(peak.rss_mib)
    gpu = None
    if peak.gpu_mib is not None:
        gpu = {}
        for index in sorted(peak.gpu_mib):
            per = {name: _r((r.gpu_mib or {}).get(index, 0.0)) if r is not None else None
                   for name, r in points.items()}
            per["peak"] = _r(peak.gpu_mib[index])
            gpu[str(index)] = per
    samples = [[round(t - current.start, 3), _r(rss_mib), _r(g)] for t, rss_mib, g in monitor.samples()]
    return {"pid": os.getpid(), "start": current.start, "stop": time.time(), "rss_mib": rss, "gpu_mib": gpu,
            "samples": samples}
