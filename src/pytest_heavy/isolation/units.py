"""The parent's bookkeeping of one heavy unit: what is left to run, and each child that ran part of it."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import psutil
import pytest

from .. import procs, supervise
from ..report import HeavyRecord
from .launch.base import Started, UnitRequest
from .schedule import Job, Placement

if TYPE_CHECKING:
    from .plan import Unit


class Attempt:
    """One child process running (part of) a heavy unit."""

    def __init__(self, started: Started, method: str, sup: supervise.Supervisor) -> None:
        self.started = started
        self.method = method
        self.sup = sup
        self.t0 = time.monotonic()
        self.eof = False  # the event stream ended
        self.exited_at: float | None = None
        self.stop_sent = False
        self.progress = False  # at least one test started in this attempt
        self.leftovers: list[psutil.Process] = []  # descendants the child still had when it finished
        self.out = procs.Drain(started.stdout) if started.stdout else None
        self.err = procs.Drain(started.stderr) if started.stderr else None

    @property
    def pid(self) -> int:
        return self.started.process.pid

    def stderr_size(self) -> int:
        return self.err.size if self.err else 0

    def settle(self, timeout: float) -> bool:
        """Move this child towards its end: note its exit, enforce ``timeout`` (0: none), end a
        grandchild that holds the event stream open, bound the wait for an exit after the stream
        ended. True once both the stream and the process are over."""
        now = time.monotonic()
        if self.exited_at is None and self.started.process.poll() is not None:
            self.exited_at = now
        if timeout and not self.sup.timed_out and now - self.t0 > timeout and not self.eof:
            self.sup.time_out(self.stderr_size)
        if self.exited_at is not None and now - self.exited_at > supervise.STREAM_GRACE_S and not self.eof:
            # a grandchild still holds the event pipe open: its session is killed, which ends the stream
            procs.kill_leftovers(self.pid, self.sup.seen())
        if self.eof and self.exited_at is None:
            if procs.wait(self.started.process, supervise.EXIT_GRACE_S) is None:
                self.sup.end()
            self.exited_at = time.monotonic()
        return self.eof and self.exited_at is not None

    def tail(self, lines: int = 40) -> str:
        """The end of the child's stderr; from faulthandler's header on when it crashed (a forked
        child's stack is deep: the header would fall outside a plain 40-line tail)."""
        if self.err is None:
            return "(stderr went to the terminal: -s)"
        text = self.err.tail(lines, start_at="Fatal Python error")
        return f"last lines of its stderr:\n{text}" if text else "(its stderr was empty)"


class UnitRun:
    """A heavy unit across its attempts: what is left to run, and what each test has reported."""

    def __init__(self, unit: Unit) -> None:
        assert unit.module is not None
        self.unit = unit
        self.name = unit.module
        self.items: dict[str, pytest.Item] = {item.nodeid: item for item in unit.items}
        self.pending = [item.nodeid for item in unit.items]
        self.phases: dict[str, dict[str, bool]] = {}  # nodeid -> when -> passed
        self.current: str | None = None  # the test the child is running now
        self.collect_error: str | None = None
        self.attempt: Attempt | None = None
        self.statuses: list[str] = []  # how each attempt's child ended
        self.record = HeavyRecord(unit=self.name, kind="module", start_method="", tests=len(self.pending))
        self.t0 = time.monotonic()
        # Scheduling (isolation/schedule): what it needs, where it runs, whom it shared a GPU with.
        self.job = Job(self.name, gpus=unit.gpus, heavy_ram=unit.heavy_ram, routed=unit.gpu)
        self.placement = Placement()
        self.shared_gpus: set[int] = set()  # NVML indices of GPUs where another child ran beside it
        # While it may share a GPU, each test's events are held until its logfinish (replay.py), so that
        # a test that ran out of GPU memory can be dropped and re-run alone instead of reported failed.
        self.holding = False
        self.held: list[dict[str, Any]] = []  # the current test's events, not replayed yet
        self.oom_held: list[dict[str, Any]] = []  # events of tests dropped after an OOM while sharing

    def met(self, other: UnitRun, gpus: set[int]) -> None:
        """``other`` was placed on ``gpus`` (NVML indices) of ours while we run."""
        self.shared_gpus |= gpus
        if other.name not in self.record.beside:
            self.record.beside.append(other.name)

    def started(self, nodeid: str) -> None:
        self.current = nodeid
        if nodeid in self.pending:
            self.pending.remove(nodeid)
        if self.attempt:
            self.attempt.progress = True

    def request(self, env: dict[str, str], maxfail: int) -> UnitRequest:
        """What the next child runs: every test still pending, in the parent's order."""
        return UnitRequest(unit=self.name, nodeids=list(self.pending),
                           paths=sorted({str(self.items[n].path) for n in self.pending}),
                           maxfail=maxfail, items=[self.items[n] for n in self.pending], env=env)

    def finish(self) -> HeavyRecord:
        self.record.exit = ", ".join(self.statuses)
        self.record.wall_s = time.monotonic() - self.t0
        return self.record
