"""Child events -> pytest's own hooks, in the parent's main thread; and the reports the parent writes
itself for tests whose child could not report them (crashed, never started, not collected).

Terminal, junit, ``--lf`` and the exit code see exactly what an in-process run would, because every
report goes through ``pytest_runtest_logreport`` like one produced here.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import IO, Any

import pytest

from .. import procs
from ..wire import Event, deserialize_warning, events, tuples
from . import oom
from ._reprs import failure_repr
from .units import UnitRun

PHASES = ("setup", "call", "teardown")


class Replay:
    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.hook = config.hook
        self.inbox: queue.Queue[tuple[UnitRun, dict[str, Any] | None]] = queue.Queue()
        self.handlers: dict[str, Callable[[UnitRun, dict[str, Any]], None]] = {
            Event.LOGSTART.value: self.logstart,
            Event.REPORT.value: self.report,
            Event.LOGFINISH.value: self.logfinish,
            Event.WARNING.value: self.warning,
            Event.LEFTOVERS.value: self.leftovers,
            Event.COLLECT_ERROR.value: self.collect_error,
            Event.MISSING.value: self.missing,
            Event.DONE.value: self.done,
        }

    def listen(self, ur: UnitRun, stream: IO[bytes]) -> None:
        """Read a child's event stream in a thread of its own; its events wait in a queue for ``drain``."""
        threading.Thread(target=self._read, args=(ur, stream), name=f"heavy-events-{ur.name}",
                         daemon=True).start()

    def _read(self, ur: UnitRun, stream: IO[bytes]) -> None:
        with stream:
            for event in events(stream):
                self.inbox.put((ur, event))
        self.inbox.put((ur, None))

    def drain(self, block: bool) -> None:
        """Replay every queued event in this (the main) thread; with ``block``, wait briefly for one."""
        try:
            ur, event = self.inbox.get(timeout=0.05) if block else self.inbox.get_nowait()
            while True:
                self.handle(ur, event)
                ur, event = self.inbox.get_nowait()
        except queue.Empty:
            pass

    def handle(self, ur: UnitRun, event: dict[str, Any] | None) -> None:
        """One event; None is the end of the stream."""
        if event is None:
            self.flush(ur)  # a test the child did not finish: its events count as they are
            if ur.attempt:
                ur.attempt.eof = True
            return
        if ur.holding and (ur.held or event["event"] == Event.LOGSTART.value):
            ur.held.append(event)
            if event["event"] == Event.LOGFINISH.value:
                self.test_done(ur)
            return
        self.handlers[event["event"]](ur, event)

    def test_done(self, ur: UnitRun) -> None:
        """A test that ran while its unit might share a GPU is over: a failure for want of GPU memory,
        when another child did share it, is dropped (to be re-run alone); anything else is replayed."""
        events, ur.held = ur.held, []
        if ur.shared_gpus and any(oom.is_oom_failure(e) for e in events):
            ur.oom_held += events
        else:
            self.replay(ur, events)

    def flush(self, ur: UnitRun) -> None:
        """The events of a test still held (its child ended during it) are handled as they are."""
        events, ur.held = ur.held, []
        self.replay(ur, events)

    def replay_dropped(self, ur: UnitRun) -> None:
        """Tests dropped after an OOM that will not be re-run (the session is stopping): their reports."""
        events, ur.oom_held = ur.oom_held, []
        self.replay(ur, events)

    def replay(self, ur: UnitRun, events: list[dict[str, Any]]) -> None:
        for event in events:
            self.handlers[event["event"]](ur, event)

    # --- one handler per event ---------------------------------------------------------------------

    def logstart(self, ur: UnitRun, event: dict[str, Any]) -> None:
        ur.started(event["nodeid"])
        self.hook.pytest_runtest_logstart(nodeid=event["nodeid"], location=tuple(event["location"]))

    def report(self, ur: UnitRun, event: dict[str, Any]) -> None:
        data = tuples(event["data"])
        self.log_report(ur, self.hook.pytest_report_from_serializable(config=self.config, data=data))

    def logfinish(self, ur: UnitRun, event: dict[str, Any]) -> None:
        ur.current = None
        self.hook.pytest_runtest_logfinish(nodeid=event["nodeid"], location=tuple(event["location"]))

    def warning(self, ur: UnitRun, event: dict[str, Any]) -> None:
        location = event.get("location")
        self.hook.pytest_warning_recorded.call_historic(kwargs=dict(
            warning_message=deserialize_warning(event["message"]), when=event["when"],
            nodeid=event["nodeid"], location=tuple(location) if location else None))

    def leftovers(self, ur: UnitRun, event: dict[str, Any]) -> None:
        if ur.attempt:
            ur.attempt.leftovers = procs.still_running(event["processes"])

    def collect_error(self, ur: UnitRun, event: dict[str, Any]) -> None:
        ur.collect_error = event["longrepr"]

    def missing(self, ur: UnitRun, event: dict[str, Any]) -> None:
        why = (f"could not be collected in the child process for {ur.name}:\n{ur.collect_error}"
               if ur.collect_error else
               f"was not collected in the child process for {ur.name} (collection differs between "
               "the parent and the child)")
        for nodeid in event["nodeids"]:
            if nodeid in ur.pending:
                ur.pending.remove(nodeid)
                self.fail_unstarted(ur, nodeid, f"{nodeid} {why}")

    def done(self, ur: UnitRun, event: dict[str, Any]) -> None:
        """The child's session is over; its exit status arrives with the process's own return code."""

    # --- reports --------------------------------------------------------------------------------------

    def log_report(self, ur: UnitRun, report: pytest.TestReport) -> None:
        ur.phases.setdefault(report.nodeid, {})[report.when] = report.passed
        if report.when == "teardown" and ur.attempt:
            peaks = ur.attempt.sup.monitor.peaks
            report.user_properties.append(("heavy_module_peak_rss_mib", round(peaks.rss_mib)))
            if peaks.gpu_mib is not None:
                report.user_properties.append(("heavy_module_peak_gpu_mib", round(peaks.gpu_mib)))
        ur.record.count(report)
        self.hook.pytest_runtest_logreport(report=report)

    def synthesize(self, ur: UnitRun, nodeid: str, when: str, message: str | None) -> None:
        item = ur.items[nodeid]
        now = time.time()
        report = pytest.TestReport(
            nodeid=nodeid, location=item.location, keywords={k: 1 for k in item.keywords},
            outcome="failed" if message else "passed", when=when,  # type: ignore[arg-type]
            longrepr=failure_repr(item, message) if message else None,
            sections=[], duration=0.0, start=now, stop=now, user_properties=[],
        )
        self.log_report(ur, report)

    def fail_unstarted(self, ur: UnitRun, nodeid: str, message: str) -> None:
        """A test that never ran: reported as an error in setup, like a failing fixture."""
        location = ur.items[nodeid].location
        self.hook.pytest_runtest_logstart(nodeid=nodeid, location=location)
        self.synthesize(ur, nodeid, "setup", message)
        self.synthesize(ur, nodeid, "teardown", None)
        self.hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)

    def fail_pending(self, ur: UnitRun, message: Callable[[str], str]) -> None:
        """Every test still pending never ran: each fails in setup with ``message(nodeid)``."""
        for nodeid in list(ur.pending):
            ur.pending.remove(nodeid)
            self.fail_unstarted(ur, nodeid, message(nodeid))

    def fail_current(self, ur: UnitRun, message: str) -> None:
        """The test that was running when its child died: the first missing phase fails."""
        nodeid = ur.current
        if nodeid is None:
            return
        ur.current = None
        got = ur.phases.setdefault(nodeid, {})  # log_report adds to this same dict as we go
        failed = False
        for when in PHASES:
            if when in got:
                continue
            if when == "call" and got.get("setup") is False:
                continue  # setup did not pass: pytest would not have called the test
            self.synthesize(ur, nodeid, when, None if failed else message)
            failed = True
        self.hook.pytest_runtest_logfinish(nodeid=nodeid, location=ur.items[nodeid].location)
