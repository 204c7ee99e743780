"""The parent's books of one heavy unit across its children: what is left to run, what each test has
reported, and the unit's heavy-table row.

Its fields are written here only. The controller hands it each event of its child and, once a child
is over, that child's ``Ended``; it answers with the events to replay (``Replayable``): a child's own,
or the reports the parent writes itself for tests whose child could not report them (crashed, never
started, not collected). It never calls the replayer.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import pytest

from .. import wire
from ..report import HeavyRecord
from . import oom, subtests
from ._reprs import failure_repr
from .launch.base import UnitRequest
from .schedule import Placement

if TYPE_CHECKING:
    from ..hardware import Hardware
    from .launch.attempt import Ended
    from .plan import Unit

PHASES = ("setup", "call", "teardown")
# Events of the child's session, not of one test: never held back with a test's events.
SESSION_EVENTS = {wire.Event.INTERRUPT.value, wire.Event.LEFTOVERS.value, wire.Event.DONE.value}
# What the controller replays: a child's event, or a report the parent wrote for one of its tests.
Replayable = wire.Message | pytest.TestReport


class UnitRun:
    """A heavy unit across its attempts: what is left to run, and what each test has reported."""

    def __init__(self, unit: Unit) -> None:
        assert unit.module is not None
        self.unit = unit
        self.name = unit.module
        self.items: dict[str, pytest.Item] = {item.nodeid: item for item in unit.items}
        self.pending = [item.nodeid for item in unit.items]
        self.phases: dict[str, dict[str, bool]] = {}  # nodeid -> when -> passed
        self.collect_error: str | None = None
        self.statuses: list[str] = []  # how each attempt's child ended
        self.record = HeavyRecord(unit=self.name, kind="module", start_method="", tests=len(self.pending))
        self.t0: float | None = None  # when its first child was placed (not when it was queued)
        # Scheduling (isolation/schedule): what it needs, where it runs, whom it shared a GPU with.
        self.job = unit.job()
        self.placement = Placement()
        self.shared_gpus: set[int] = set()  # NVML indices of GPUs where another child ran beside it
        # While it may share a GPU, each test's events are held until its logfinish, so that a test
        # that ran out of GPU memory can be dropped and re-run alone instead of reported failed.
        self.holding = False
        self.held: list[wire.Message] = []  # the current test's events, not replayed yet
        self.oom_held: list[wire.Message] = []  # events of tests dropped after an OOM while sharing

    # --- placing and starting ------------------------------------------------------------------------

    def place(self, placement: Placement, hw: Hardware, running: list[UnitRun]) -> None:
        """Take ``placement``'s GPUs and note every running unit that shares one of them."""
        self.t0 = self.t0 or time.monotonic()
        self.placement = placement
        self.holding = placement.may_share
        self.record.gpus = placement.indices(hw)
        for other in running:
            common = {hw.gpus[i].index for i in set(other.placement.gpus) & set(placement.gpus)}
            if common:
                self.met(other, common)
                other.met(self, common)

    def met(self, other: UnitRun, gpus: set[int]) -> None:
        """``other`` was placed on ``gpus`` (NVML indices) of ours while we run."""
        self.shared_gpus |= gpus
        if other.name not in self.record.beside:
            self.record.beside.append(other.name)

    def request(self, env: dict[str, str], maxfail: int, staged: bool = False) -> UnitRequest:
        """What the next child runs: every test still pending, in the parent's order."""
        return UnitRequest(unit=self.name, nodeids=list(self.pending),
                           paths=sorted({str(self.items[n].path) for n in self.pending}),
                           maxfail=maxfail, items=[self.items[n] for n in self.pending], env=env,
                           staged=staged)

    def launched(self, method: str, why: str, restart: bool) -> None:
        """A child runs its pending tests now, started with ``method`` (``why`` not the chosen one);
        ``restart``: after the previous one crashed."""
        self.record.restarts += restart
        self.record.start_method, self.record.start_note = method, self.record.start_note or why

    # --- its child's events ----------------------------------------------------------------------------

    def take(self, event: wire.Message | None) -> list[Replayable]:
        """An event of its child (None: the end of the stream): what to replay now. The tests whose
        start is replayed are no longer pending."""
        return self._release(self._hold(event))

    def _release(self, events: list[Replayable]) -> list[Replayable]:
        for event in events:
            if isinstance(event, dict) and event["event"] == "logstart" and event["nodeid"] in self.pending:
                self.pending.remove(event["nodeid"])
        return events

    def _hold(self, event: wire.Message | None) -> list[Replayable]:
        if event is None or event["event"] in SESSION_EVENTS:
            # A test the child did not finish, or that ended its session: its held events count as they
            # are. 'leftovers' and 'done' are about the child itself: its Attempt took them.
            held: list[Replayable] = [*self.held]
            self.held = []
            return [*held, event] if event is not None and event["event"] == "interrupt" else held
        if event["event"] == "collecterror":
            self.collect_error = event["longrepr"]
            return []
        if event["event"] == "missing":
            return self._missing(event["nodeids"])
        if self.holding and (self.held or event["event"] == "logstart"):
            self.held.append(event)
            return self._test_done() if event["event"] == "logfinish" else []
        return [event]

    def _test_done(self) -> list[Replayable]:
        """A test that ran while its unit might share a GPU is over: a failure for want of GPU memory,
        when another child did share it, is dropped (to be re-run alone); anything else is replayed."""
        events, self.held = self.held, []
        if self.shared_gpus and any(oom.is_oom_failure(e) for e in events):
            self.oom_held += events
            return []
        return list(events)

    def _missing(self, nodeids: list[str]) -> list[Replayable]:
        """Tests the child did not collect: each fails in setup, with the collection error if any."""
        why = (f"could not be collected in the child process for {self.name}:\n{self.collect_error}"
               if self.collect_error else
               f"was not collected in the child process for {self.name} (collection differs between "
               "the parent and the child)")
        events: list[Replayable] = []
        for nodeid in nodeids:
            if nodeid in self.pending:
                self.pending.remove(nodeid)
                events += self._unstarted(nodeid, f"{nodeid} {why}")
        return events

    def count(self, report: pytest.TestReport) -> None:
        """A report about to be logged: its phase's outcome, and the heavy table's counts."""
        self.phases.setdefault(report.nodeid, {})[report.when] = report.passed
        if not subtests.is_subtest(report):  # a subtest is part of a test, not one
            self.record.count(report)

    # --- its child's end -------------------------------------------------------------------------------

    def took(self, ended: Ended, rerun_dropped: bool) -> list[Replayable]:
        """A child is over: how it ended, its peaks, its leftovers and its GPU memory into the row. Returns
        what to replay: the tests dropped after an OOM while sharing a GPU (unless they ``rerun_dropped``,
        alone), and the failure of the test it died in."""
        record, peaks = self.record, ended.peaks
        self.statuses.append(ended.status)
        record.killed = [*record.killed, *ended.killed]
        record.peak_rss_mib = max(record.peak_rss_mib, peaks.rss_mib)
        record.samples += peaks.samples
        if peaks.gpu_mib is not None:
            record.peak_gpu_mib = max(record.peak_gpu_mib or 0.0, peaks.gpu_mib)
            record.add_gpu_peaks(peaks.gpu_per_device(self.placement.gpus or None))
        record.released = ended.released.text()
        record.gpu_before_mib, record.gpu_after_mib = ended.gpu_before_mib, ended.gpu_after_mib
        return [*([] if rerun_dropped else self._dropped()), *self._crashed(ended)]

    def _crashed(self, ended: Ended) -> list[Replayable]:
        """The test that was running when its child died: the first missing phase fails, with the
        output the test had written so far (read from the dead child's capture files)."""
        nodeid = ended.current
        if nodeid is None:
            return []
        item = self.items[nodeid]
        got = dict(self.phases.get(nodeid, {}))
        events: list[Replayable] = []
        sections: list[tuple[str, str]] = []
        for when in PHASES:
            if when in got or (when == "call" and got.get("setup") is False):
                continue  # reported, or setup did not pass: pytest would not have called the test
            failing = not events
            if failing:  # later phases carry them too, as pytest's reports do (junit reads teardown's)
                sections = [(f"Captured {name} {when}", text)
                            for name, text in ended.captured.items() if text]
            events.append(self._report(item, when, ended.crash if failing else None, sections))
            got[when] = not failing
        return [*events, wire.LogFinish(event="logfinish", nodeid=nodeid, location=item.location)]

    def _dropped(self) -> list[Replayable]:
        """Tests dropped after an OOM that will not be re-run (the session is stopping): their events."""
        events: list[Replayable] = [*self.oom_held]
        self.oom_held = []
        return self._release(events)

    def alone_after_oom(self) -> UnitRun:
        """Its tests ran out of GPU memory beside another child: the next child runs alone."""
        gpus = ",".join(map(str, sorted(self.shared_gpus)))
        self.record.note = f"retried alone after OOM while sharing GPU {gpus}"
        self.oom_held = []
        self.job = dataclasses.replace(self.job, alone=True)
        self.shared_gpus = set()
        return self

    def unreached(self, ended: Ended) -> list[Replayable]:
        """No child will run the tests still pending: each fails in setup, unless the child stopped on
        purpose (the session is stopping: they are dropped, as in-process)."""
        message = (f"was not run: the child process for {self.name} ended ({ended.status}) before "
                   f"reaching it\n{ended.tail}")
        return self._give_up(None if ended.stopped else message)

    def refused(self, why: str) -> list[Replayable]:
        """Its child must not start (the parent holds a CUDA context): every pending test fails."""
        self.statuses.append("not started: the parent holds a CUDA context")
        return self._give_up(why, ": ")

    def _give_up(self, message: str | None, sep: str = " ") -> list[Replayable]:
        events: list[Replayable] = []
        for nodeid in self.pending if message is not None else ():
            events += self._unstarted(nodeid, f"{nodeid}{sep}{message}")
        self.pending.clear()
        return events

    def finish(self) -> HeavyRecord:
        self.record.exit = ", ".join(self.statuses)
        self.record.wall_s = time.monotonic() - (self.t0 or time.monotonic())
        return self.record

    # --- reports the parent writes itself --------------------------------------------------------------

    def _unstarted(self, nodeid: str, message: str) -> list[Replayable]:
        """A test that never ran: reported as an error in setup, like a failing fixture."""
        item = self.items[nodeid]
        return [wire.LogStart(event="logstart", nodeid=nodeid, location=item.location),
                self._report(item, "setup", message), self._report(item, "teardown", None),
                wire.LogFinish(event="logfinish", nodeid=nodeid, location=item.location)]

    @staticmethod
    def _report(item: pytest.Item, when: str, message: str | None,
                sections: list[tuple[str, str]] | None = None) -> pytest.TestReport:
        now = time.time()
        return pytest.TestReport(
            nodeid=item.nodeid, location=item.location, keywords={k: 1 for k in item.keywords},
            outcome="failed" if message else "passed", when=when,  # type: ignore[arg-type]
            longrepr=failure_repr(item, message) if message else None,
            sections=sections or [], duration=0.0, start=now, stop=now, user_properties=[],
        )
