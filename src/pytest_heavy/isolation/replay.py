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
from typing import Any

import pytest

from ..wire import Event, deserialize_warning, events
from . import oom, subtests
from ._reprs import failure_repr
from .units import Attempt, UnitRun

PHASES = ("setup", "call", "teardown")
# Events of the child's session, not of one test: never held back with a test's events.
SESSION_EVENTS = {Event.INTERRUPT.value, Event.LEFTOVERS.value, Event.DONE.value}


class Replay:
    def __init__(self, config: pytest.Config, junit_properties: bool = False) -> None:
        self.config = config
        self.hook = config.hook
        self.inbox: queue.Queue[tuple[UnitRun, Attempt, dict[str, Any] | None]] = queue.Queue()
        self.junit_properties = junit_properties  # peak memory in user_properties: only when asked
        self.handlers: dict[str, Callable[[UnitRun, dict[str, Any]], None]] = {
            Event.LOGSTART.value: self.logstart,
            Event.REPORT.value: self.report,
            Event.LOGFINISH.value: self.logfinish,
            Event.WARNING.value: self.warning,
            Event.LEFTOVERS.value: self.leftovers,
            Event.COLLECT_ERROR.value: self.collect_error,
            Event.MISSING.value: self.missing,
            Event.INTERRUPT.value: self.interrupt,
            Event.DONE.value: self.done,
        }
        self.interrupted: dict[str, Any] | None = None  # the first child's pytest.exit() or Ctrl-C

    def listen(self, ur: UnitRun, attempt: Attempt) -> None:
        """Read a child's event stream in a thread of its own; its events wait in a queue for ``drain``."""
        threading.Thread(target=self._read, args=(ur, attempt), name=f"heavy-events-{ur.name}",
                         daemon=True).start()

    def _read(self, ur: UnitRun, attempt: Attempt) -> None:
        with attempt.started.events:
            for event in events(attempt.started.events):
                self.inbox.put((ur, attempt, event))
        self.inbox.put((ur, attempt, None))

    def drain(self, block: bool) -> None:
        """Replay every queued event in this (the main) thread; with ``block``, wait briefly for one."""
        try:
            ur, attempt, event = self.inbox.get(timeout=0.05) if block else self.inbox.get_nowait()
            while True:
                if not attempt.finished:  # an abandoned stream's late events belong to nothing now
                    self.handle(ur, event)
                ur, attempt, event = self.inbox.get_nowait()
        except queue.Empty:
            pass

    def handle(self, ur: UnitRun, event: dict[str, Any] | None) -> None:
        """One event; None is the end of the stream."""
        if event is None:
            self.flush(ur)  # a test the child did not finish: its events count as they are
            if ur.attempt:
                ur.attempt.eof = True
            return
        if event["event"] in SESSION_EVENTS:
            self.flush(ur)  # a test the session ended during (pytest.exit()): its events count as they are
        elif ur.holding and (ur.held or event["event"] == Event.LOGSTART.value):
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
        report = self.hook.pytest_report_from_serializable(config=self.config, data=event["data"])
        self.log_report(ur, report)

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
            ur.attempt.sup.killed += event["killed"]

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

    def interrupt(self, ur: UnitRun, event: dict[str, Any]) -> None:
        """A test called pytest.exit() or raised KeyboardInterrupt: as in-process, it ends without an
        outcome, and the controller ends the session once the running children stopped."""
        ur.current = None
        if ur.attempt:
            ur.attempt.interrupted = event["kind"]
        self.interrupted = self.interrupted or event

    def reraise_interrupt(self) -> None:
        if self.interrupted:
            reraise(self.interrupted)

    def done(self, ur: UnitRun, event: dict[str, Any]) -> None:
        """The child's session is over: nothing follows, whether or not something it started still
        holds the stream open. Its exit status arrives with the process's own return code."""
        if ur.attempt:
            ur.attempt.done = True

    # --- reports --------------------------------------------------------------------------------------

    def log_report(self, ur: UnitRun, report: pytest.TestReport) -> None:
        ur.phases.setdefault(report.nodeid, {})[report.when] = report.passed
        # Only when asked: by default an isolated run's junit equals an in-process run's.
        if report.when == "teardown" and ur.attempt and self.junit_properties:
            peaks = ur.attempt.sup.monitor.peaks
            report.user_properties.append(("heavy_module_peak_rss_mib", round(peaks.rss_mib)))
            if peaks.gpu_mib is not None:
                report.user_properties.append(("heavy_module_peak_gpu_mib", round(peaks.gpu_mib)))
        if not subtests.is_subtest(report):  # a subtest is part of a test, not one
            ur.record.count(report)
        self.hook.pytest_runtest_logreport(report=report)

    def synthesize(self, ur: UnitRun, nodeid: str, when: str, message: str | None,
                   sections: list[tuple[str, str]] | None = None) -> None:
        item = ur.items[nodeid]
        now = time.time()
        report = pytest.TestReport(
            nodeid=nodeid, location=item.location, keywords={k: 1 for k in item.keywords},
            outcome="failed" if message else "passed", when=when,  # type: ignore[arg-type]
            longrepr=failure_repr(item, message) if message else None,
            sections=sections or [], duration=0.0, start=now, stop=now, user_properties=[],
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
        """The test that was running when its child died: the first missing phase fails, with the
        output the test had written so far (read from the dead child's capture files)."""
        nodeid = ur.current
        if nodeid is None:
            return
        ur.current = None
        captured = ur.attempt.captured if ur.attempt else {}
        got = ur.phases.setdefault(nodeid, {})  # log_report adds to this same dict as we go
        failed = False
        sections: list[tuple[str, str]] = []
        for when in PHASES:
            if when in got:
                continue
            if when == "call" and got.get("setup") is False:
                continue  # setup did not pass: pytest would not have called the test
            if not failed:  # later phases carry them too, as pytest's reports do (junit reads teardown's)
                sections = [(f"Captured {name} {when}", text)
                            for name, text in captured.items() if text]
            self.synthesize(ur, nodeid, when, None if failed else message, sections)
            failed = True
        self.hook.pytest_runtest_logfinish(nodeid=nodeid, location=ur.items[nodeid].location)


def reraise(event: dict[str, Any]) -> None:
    """End the parent's session as the test in the child ended its own: pytest then prints
    ``!!! Exit: reason !!!`` (or ``!!! KeyboardInterrupt !!!`` and where) and exits with 2, or with
    the code given to ``pytest.exit``."""
    if event["kind"] == "KeyboardInterrupt":
        path, _, line = event["where"].rpartition(":")
        if path and line.isdigit():  # raised "at" the test's own line, so that pytest names it and not us
            exec(compile("\n" * (int(line) - 1) + "raise KeyboardInterrupt", path, "exec"))
        raise KeyboardInterrupt
    raise pytest.exit.Exception(event["reason"], event["returncode"])
