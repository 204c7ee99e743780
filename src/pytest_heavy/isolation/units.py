"""The parent's bookkeeping of one heavy unit: what is left to run, and each child that ran part of it."""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import TYPE_CHECKING, Any

import psutil
import pytest

from .. import draining, procs, supervise
from ..report import HeavyRecord
from .launch.base import Started, UnitRequest, release_parent_fds
from .schedule import Job, Placement, Scheduler

if TYPE_CHECKING:
    from ..hardware import Hardware
    from ..memory import Peaks
    from ..settings import Settings
    from .plan import Unit


class Attempt:
    """One child process running (part of) a heavy unit."""

    def __init__(self, started: Started, method: str, sup: supervise.Supervisor) -> None:
        self.started = started
        self.method = method
        self.sup = sup
        self.t0 = time.monotonic()
        self.eof = False  # the event stream ended
        self.done = False  # the child said all it had to say ('done', its last event)
        self.finished = False  # over: events that still arrive for it are dropped
        self.drain_kill_at: float | None = None  # when what held its stream open after its exit was killed
        self.exited_at: float | None = None
        self.stop_sent = False
        self.interrupted: str | None = None  # 'Exit' or 'KeyboardInterrupt': a test ended the session
        self.progress = False  # at least one test started in this attempt
        self.inodes = procs.pipe_inodes(started.events, started.stdout, started.stderr)  # who holds them?
        self.captured: dict[str, str] = {}  # set by close(): the dead child's last test's output
        self.terminal = ""  # and what its terminal reporter wrote during that test
        self.out = draining.Drain(started.stdout) if started.stdout else None
        self.err = draining.Drain(started.stderr) if started.stderr else None

    @property
    def pid(self) -> int:
        return self.started.process.pid

    def close(self) -> Peaks:
        """The child is over: SIGKILL what is left of its tree, collect its output, release our fds."""
        self.finished = True
        peaks = self.sup.reap(self.holders())
        for drain in (self.out, self.err):
            if drain:
                drain.join(timeout=5)
        os.close(self.started.control)
        release_parent_fds(*self.started.parent_fds)  # the streams are closed at EOF by their readers
        self.captured = self._read_captured()
        self.terminal = self.captured.pop("terminal", "").rstrip("\n")
        return peaks

    def request_stop(self) -> None:
        """Ask the child to stop after its current test (-x, --maxfail, Ctrl-C in the parent)."""
        if not self.stop_sent:
            self.stop_sent = True
            try:
                os.write(self.started.control, b"stop\n")
            except OSError:
                pass

    def stderr_size(self) -> int:
        return self.err.size if self.err else 0

    def settle(self, timeout: float) -> bool:
        """Move this child towards its end: note its exit, enforce ``timeout`` (0: none), bound the
        wait for its exit once it said all it had to say, and bound the wait for the end of its
        stream once it exited. True once the child is over: exited, and its stream ended or its
        last word ('done') read."""
        now = time.monotonic()
        if self.exited_at is None and self.started.process.poll() is not None:
            self.exited_at = now
        said_all = self.eof or self.done
        if timeout and not self.sup.timed_out and now - self.t0 > timeout and not said_all:
            self.sup.time_out(self.stderr_size)
        if self.exited_at is not None and not said_all and now - self.exited_at > supervise.STREAM_GRACE_S:
            self.drain(now)
        if said_all and self.exited_at is None:
            if draining.wait(self.started.process, supervise.EXIT_GRACE_S) is None:
                self.sup.end()
            self.exited_at = time.monotonic()
        return (self.eof or self.done) and self.exited_at is not None

    def drain(self, now: float) -> None:
        """The child died without its last word and something it started (a daemon that inherited
        the pipe) keeps the stream open: kill what it left, which ends the stream, then read what is
        left of it for a bounded time; after that the stream is abandoned and the run goes on."""
        if self.drain_kill_at is None:
            self.drain_kill_at = now
            self.sup.killed += procs.kill_leftovers(self.pid, [*self.sup.seen(), *self.holders()])
        elif now - self.drain_kill_at > supervise.STREAM_GRACE_S:
            self.eof = True

    @property
    def stopped(self) -> bool:
        """The child ended its run on purpose: told to stop, or one of its tests ended the session."""
        return self.stop_sent or self.interrupted is not None

    def status(self, current: str | None) -> str:
        """How the child ended, for the heavy table: 'exit 0', 'SIGSEGV', 'timeout', 'stopped' (told
        to, and between tests: ``current`` is None), 'interrupted (Exit)'."""
        if self.interrupted:
            return f"interrupted ({self.interrupted})"
        if self.stop_sent and current is None:
            return "stopped"
        if self.sup.timed_out:
            return "timeout"
        returncode = self.started.process.poll()
        return procs.signal_name(returncode if returncode is not None else -signal.SIGKILL)

    def crash_message(self, unit: str, current: str | None, timeout: float) -> str:
        if self.sup.timed_out:
            return (f"{unit} timed out after {timeout:g}s (--heavy-timeout) during {current}; "
                    f"the child's Python stacks and stderr:\n{self.tail(100)}")
        message = f"child process for {unit} died with {self.status(current)} during {current}\n{self.tail()}"
        if self.terminal:  # pytest-timeout's thread method dumps its stacks there, then exits
            message += "\nits terminal output during the test:\n" + "\n".join(
                self.terminal.splitlines()[-100:])
        return message

    def holders(self) -> list[psutil.Process]:
        """Processes that still hold this child's pipes open, once it is gone: a leftover wherever it
        went, also one that neither its session nor the tree samples saw. Scanned (a few ms through
        /proc) only while a pipe is still open, as it may be for a moment after the child's 'done'."""
        if self.eof and not any(d.reading() for d in (self.out, self.err) if d):
            return []
        return procs.pipe_holders(self.inodes)

    def tail(self, lines: int = 40) -> str:
        """The end of the child's stderr; from faulthandler's header on when it crashed (a forked
        child's stack is deep: the header would fall outside a plain 40-line tail)."""
        if self.err is None:
            return "(stderr went to the terminal: -s)"
        text = self.err.tail(lines, start_at="Fatal Python error")
        return f"last lines of its stderr:\n{text}" if text else "(its stderr was empty)"

    def _read_captured(self) -> dict[str, str]:
        """What the child's last test had written to its capture files since its last phase, and
        what pytest and plugins wrote to its (silenced) terminal since that test started: all that
        is left there once the child is gone, a test that died kept it. The files are closed."""
        texts = {}
        for name, fd in zip(("stdout", "stderr", "terminal"), self.started.capture or (), strict=False):
            texts[name] = os.pread(fd, min(os.fstat(fd).st_size, 1 << 20), 0).decode("utf-8", "replace")
            os.close(fd)
        return texts


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

    def place(self, placement: Placement, hw: Hardware, running: list[UnitRun]) -> None:
        """Take ``placement``'s GPUs and note every running unit that shares one of them."""
        self.placement = placement
        self.holding = placement.may_share
        self.record.gpus = placement.indices(hw)
        for other in running:
            common = {hw.gpus[i].index for i in set(other.placement.gpus) & set(placement.gpus)}
            if common:
                self.met(other, common)
                other.met(self, common)

    def account(self, attempt: Attempt, peaks: Peaks) -> None:
        """Add a finished attempt's peaks and leftovers to the unit's heavy-table row."""
        record = self.record
        record.killed = [*record.killed, *attempt.sup.killed]
        record.peak_rss_mib = max(record.peak_rss_mib, peaks.rss_mib)
        record.samples += peaks.samples
        if peaks.gpu_mib is not None:
            record.peak_gpu_mib = max(record.peak_gpu_mib or 0.0, peaks.gpu_mib)
            record.add_gpu_peaks(peaks.gpu_per_device(self.placement.gpus or None))

    def account_release(self, attempt: Attempt, settings: Settings, pids: set[int] | None) -> None:
        """Wait (bounded) for the GPU memory the attempt held and note how it came back."""
        sup = attempt.sup
        self.record.released = sup.release(settings, pids, shared=bool(self.shared_gpus)).text()
        self.record.gpu_before_mib = sup.baseline_gpu
        self.record.gpu_after_mib = sup.gpu.device_used_mib(self.placement.gpus or None) if sup.gpu else None

    def alone_after_oom(self) -> UnitRun:
        """Its tests ran out of GPU memory beside another child: the next child runs alone."""
        gpus = ",".join(map(str, sorted(self.shared_gpus)))
        self.record.note = f"retried alone after OOM while sharing GPU {gpus}"
        self.oom_held = []
        self.job = dataclasses.replace(self.job, alone=True)
        self.shared_gpus = set()
        return self

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


class Ready:
    """Heavy units ready to start, and the scheduler that says which starts now and where."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.units: list[UnitRun] = []  # in the order the loop released them; OOM re-runs go first
        self.t_first: float | None = None  # when the first child started

    def pop(self) -> tuple[UnitRun, Placement] | None:
        """The unit the scheduler places now, taken off the queue, or None."""
        picked = self.scheduler.pick([ur.job for ur in self.units]) if self.units else None
        if picked is None:
            return None
        job, placement = picked
        ur = next(ur for ur in self.units if ur.job is job)
        self.units.remove(ur)
        self.scheduler.started(job, placement)
        now = time.monotonic()
        self.t_first = self.t_first or now
        if ur.attempt is None:
            ur.t0 = now  # its wall time starts with its first child, not in the queue
        return ur, placement

    def finished(self, ur: UnitRun) -> None:
        self.scheduler.finished(ur.job)
