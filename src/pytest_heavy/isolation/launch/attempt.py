"""The parent's owner of one child process, from launch to reap (pytest-xdist's ``WorkerController`` is
the model): it starts the child, reads its event stream in a thread of its own, keeps the child's flags
from what that stream says, supervises it (timeout, exit, the end of its stream) and, once it is over,
reaps it and hands back one ``Ended`` that the unit's books take in one call.

Nothing else writes its state: the controller asks (``watch``, ``request_stop``, ``close``, ``kill``)
and passes each event through ``note`` before the unit's books see it.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from ... import draining, memory, procs, supervise, wire
from ...settings import Settings
from ..schedule import Placement
from . import Launchers
from .base import Started, UnitRequest

# Where the stream's events go, as the lists each read brought; None: its end.
Post = Callable[["Attempt", "list[wire.Message] | None"], None]
Contexts = Callable[[set[int]], "set[int] | None"]  # the pids whose CUDA contexts must be gone (gpu/guard)


@dataclass(frozen=True)
class Ended:
    """How one child ended: all that the unit's books and the reports of its unfinished tests need."""

    status: str  # for the heavy table: 'exit 0', 'SIGSEGV', 'timeout', 'stopped', 'interrupted (Exit)'
    current: str | None  # the test it was running when it ended
    stopped: bool  # it ended its run on purpose: told to stop, or one of its tests ended the session
    progress: bool  # at least one test started in it
    crash: str  # why ``current`` failed: how the child died, and the end of its stderr
    tail: str  # the end of its stderr, for the tests it never reached
    captured: dict[str, str]  # what ``current`` had written ('stdout', 'stderr') when the child died
    peaks: memory.Peaks
    killed: list[str]  # its leftovers and survivors, SIGKILLed
    released: memory.Release  # how the GPU memory it held came back
    gpu_before_mib: int | None
    gpu_after_mib: int | None

    @property
    def restartable(self) -> bool:
        """It broke off after running at least one test (died in a test, or ended without being told
        to stop): a fresh child may run the tests it left."""
        return self.progress and (self.current is not None or not self.stopped)


@dataclass
class Staged:
    """A child started ahead of its turn (``controller.stage_next``): it collects its module while
    the child before it runs, then waits for ``go``. Nothing reads its pipes until an ``Attempt``
    takes it over, and its tests are not its unit's books' until then."""

    method: str
    started: Started
    why: str
    gone: bool = False  # told to run (once: the controller may tell it before its Attempt does)

    def go(self, maxfail: int) -> None:
        if self.gone:
            return
        self.gone = True
        try:
            os.write(self.started.control, wire.go(maxfail))
        except OSError:  # it died meanwhile: its attempt finds it so
            pass

    def discard(self) -> None:
        """Its turn never came (-x, Ctrl-C): closing the control pipe is 'the parent is gone', on which
        a child kills what it started and exits; it is waited for briefly, then killed."""
        self.started.close()
        for stream in (self.started.events, self.started.stdout, self.started.stderr):
            if stream is not None:
                stream.close()
        if draining.wait(self.started.process, DISCARD_GRACE_S) is None:
            self.started.process.send_signal(signal.SIGKILL)
            draining.wait(self.started.process, DISCARD_GRACE_S)


PIPES_END_S = 0.05  # how long a child's pipes may take to reach their end once it exited
DISCARD_GRACE_S = 2.0  # a staged child exits within milliseconds of its control pipe's end


class Attempt:
    """One child process running (part of) a heavy unit."""

    def __init__(self, started: Started, method: str, why: str, sup: supervise.Supervisor, name: str,
                 settings: Settings, contexts: Contexts | None) -> None:
        self.started, self.method, self.why, self.sup = started, method, why, sup
        self.name, self.settings, self.contexts = name, settings, contexts
        self.t0 = time.monotonic()
        self.eof = False  # the event stream ended
        self.done = False  # the child said all it had to say ('done', its last event)
        self.finished = False  # over: events that still arrive for it are dropped
        self.stream_kill_at: float | None = None  # when what held its stream open after its exit was killed
        self.exited_at: float | None = None
        self.stop_sent = False
        self.interrupted: str | None = None  # 'Exit' or 'KeyboardInterrupt': a test ended the session
        self.progress = False  # at least one test started in this attempt
        self.current: str | None = None  # the test it runs now
        self.inodes = procs.pipe_inodes(started.events, started.stdout, started.stderr)  # who holds them?
        self.reader: threading.Thread | None = None  # reads its pipes, and samples its tree (``_read``)
        self.out = draining.Drain(started.stdout, threaded=False) if started.stdout else None
        self.err = draining.Drain(started.stderr, threaded=False) if started.stderr else None

    @classmethod
    def launch(cls, launchers: Launchers, request: UnitRequest, *, placement: Placement, settings: Settings,
               gpu: memory.GpuReader | None, post: Post, contexts: Contexts | None = None,
               staged: Staged | None = None) -> Attempt:
        """Start a child for ``request`` where ``placement`` says and read its events into ``post``.
        ``contexts``: after it, wait for its CUDA contexts to be gone too (the parent trap).
        ``staged``: the child started already, ahead of its turn: it is told to run instead."""
        positions = placement.gpus or None
        baseline = gpu.device_used_mib(positions) if gpu else None
        foreign = gpu.foreign_mib(positions, set()) if gpu and placement.may_share else 0
        if staged is None:
            method, started, why = launchers.start(request)
        else:
            method, started, why = staged.method, staged.started, staged.why
            staged.go(request.maxfail)
        sup = supervise.Supervisor(started.process, gpu, baseline, "the child", positions, foreign,
                                   threaded=False)
        attempt = cls(started, method, why, sup, request.unit, settings, contexts)
        attempt.reader = threading.Thread(target=attempt._read, args=(post,), daemon=True,
                                          name=f"heavy-child-{request.unit}")
        attempt.reader.start()
        return attempt

    def _read(self, post: Post) -> None:
        """The child's one thread here: its events into ``post`` (the lists each read brought, then
        None at their end), its stdout and stderr drained, its tree sampled between reads, until every
        pipe reached its end. One thread, not one for each: the parent starts it while the staged
        child it takes over runs its tests, and on a busy machine each thread start waits for a core."""
        drains = [drain for drain in (self.out, self.err) if drain]
        monitor = self.sup.monitor
        events, reading = wire.EventStream(self.started.events), True
        with self.started.events:
            if events.fd is None:  # not pipes (a scripted launcher's streams): files, read in turn
                while (batch := events.read()) is not None:
                    post(self, batch)
                post(self, None)
                for drain in drains:
                    drain.read_to_end()
                return
            while reading or any(drain.polled() for drain in drains):
                if events in draining.pump_ready(drains, [events] if reading else [], monitor.due_in()):
                    batch = events.read()
                    if batch is None:
                        reading = False
                        post(self, None)
                    elif batch:
                        post(self, batch)
                        events.pause_after(batch)
                try:
                    monitor.tick()
                except Exception:  # sampling must never stop the reading: the child would block on a pipe
                    traceback.print_exc()

    @property
    def pid(self) -> int:
        return self.started.process.pid

    @property
    def peaks(self) -> memory.Peaks:
        """Its tree's peaks so far."""
        return self.sup.monitor.peaks

    def note(self, event: wire.Message | None) -> None:
        """What an event (None: the end of the stream) says about the child itself, in the main thread."""
        if event is None:
            self.eof = True
        elif event["event"] == "logstart":
            self.current, self.progress = event["nodeid"], True
        elif event["event"] == "logfinish":
            self.current = None
        elif event["event"] == "interrupt":
            self.current, self.interrupted = None, event["kind"]
        elif event["event"] == "leftovers":
            self.sup.killed += event["killed"]
        elif event["event"] == "done":
            self.done = True

    def request_stop(self) -> None:
        """Ask the child to stop after its current test (-x, --maxfail, Ctrl-C in the parent)."""
        if not self.stop_sent:
            self.stop_sent = True
            try:
                os.write(self.started.control, wire.STOP)
            except OSError:
                pass

    def resume(self) -> None:
        """Let the child's debugger go on (``Event.DEBUGGER``)."""
        try:
            os.write(self.started.control, wire.RESUME)
        except OSError:
            pass

    def watch(self) -> bool:
        """Move this child towards its end: note its exit, enforce the timeout, bound the wait for its
        exit once it said all it had to say, and bound the wait for the end of its stream once it
        exited. True once the child is over: exited, and its stream ended or its last word ('done') read."""
        now, timeout = time.monotonic(), self.settings.timeout
        if self.exited_at is None and self.started.process.poll() is not None:
            self.exited_at = now
        said_all = self.eof or self.done
        if timeout and not self.sup.timed_out and now - self.t0 > timeout and not said_all:
            self.sup.time_out(self._stderr_size)
        if self.exited_at is not None and not said_all and now - self.exited_at > supervise.STREAM_GRACE_S:
            self._end_stream(now)
        if said_all and self.exited_at is None:
            if draining.wait(self.started.process, supervise.EXIT_GRACE_S) is None:
                self.sup.end()
            self.exited_at = time.monotonic()
        return (self.eof or self.done) and self.exited_at is not None

    def _end_stream(self, now: float) -> None:
        """The child died without its last word and something it started (a daemon that inherited
        the pipe) keeps the stream open: kill what it left, which ends the stream, then read what is
        left of it for a bounded time; after that the stream is abandoned and the run goes on."""
        if self.stream_kill_at is None:
            self.stream_kill_at = now
            self.sup.killed += procs.kill_leftovers(self.pid, [*self.sup.seen(), *self._holders()])
        elif now - self.stream_kill_at > supervise.STREAM_GRACE_S:
            self.eof = True

    def kill(self) -> None:
        """Ctrl-C: SIGKILL the child, then whatever of its tree is left."""
        self.sup.reap()

    def close(self, shared: bool) -> Ended:
        """The child is over: SIGKILL what is left of its tree, collect its output, close our ends,
        then wait (bounded) for the GPU memory it held; ``shared``: other children ran on its GPUs."""
        self.finished = True
        peaks = self.sup.reap(self._holders())
        if self.reader is not None:  # the rest of its stdout and stderr
            self.reader.join(timeout=5)
        captured = self.started.close()
        terminal = captured.pop("terminal", "").rstrip("\n")
        pids = self.contexts({self.pid, *peaks.seen}) if self.contexts else None
        released = self.sup.release(self.settings, pids, shared=shared)
        gpu = self.sup.gpu
        return Ended(status=self.status(), current=self.current, stopped=self.stopped, progress=self.progress,
                     crash=self._crash_message(terminal), tail=self.tail(), captured=captured, peaks=peaks,
                     killed=list(self.sup.killed), released=released, gpu_before_mib=self.sup.baseline_gpu,
                     gpu_after_mib=gpu.device_used_mib(self.sup.positions) if gpu else None)

    @property
    def stopped(self) -> bool:
        """The child ended its run on purpose: told to stop, or one of its tests ended the session."""
        return self.stop_sent or self.interrupted is not None

    def status(self) -> str:
        """How the child ended, for the heavy table: 'exit 0', 'SIGSEGV', 'timeout', 'stopped' (told
        to, and between tests), 'interrupted (Exit)'."""
        if self.interrupted:
            return f"interrupted ({self.interrupted})"
        if self.stop_sent and self.current is None:
            return "stopped"
        if self.sup.timed_out:
            return "timeout"
        returncode = self.started.process.poll()
        return procs.signal_name(returncode if returncode is not None else -signal.SIGKILL)

    def _crash_message(self, terminal: str) -> str:
        """Why the test it was running fails: how it died, with its stderr's end and, unless it timed
        out, what its terminal reporter wrote during that test (``terminal``)."""
        if self.sup.timed_out:
            return (f"{self.name} timed out after {self.settings.timeout:g}s (--heavy-timeout) during "
                    f"{self.current}; the child's Python stacks and stderr:\n{self.tail(100)}")
        message = (f"child process for {self.name} died with {self.status()} during {self.current}\n"
                   f"{self.tail()}")
        if terminal:  # pytest-timeout's thread method dumps its stacks there, then exits
            message += "\nits terminal output during the test:\n" + "\n".join(terminal.splitlines()[-100:])
        return message

    def _stderr_size(self) -> int:
        return self.err.size if self.err else 0

    def _holders(self) -> list[psutil.Process]:
        """Processes that still hold this child's pipes open, once it is gone: a leftover wherever it
        went, also one that neither its session nor the tree samples saw. Scanned (~5 ms through
        /proc) only while a pipe is still open once its reader had ``PIPES_END_S`` to see them end, as
        it does within milliseconds of a child's exit when nothing else holds them."""
        if self.reader is not None:
            self.reader.join(PIPES_END_S)  # it ends at the end of every pipe
            if not self.reader.is_alive():
                return []
        return procs.pipe_holders(self.inodes)

    def tail(self, lines: int = 40) -> str:
        """The end of the child's stderr; from faulthandler's header on when it crashed (a forked
        child's stack is deep: the header would fall outside a plain 40-line tail)."""
        if self.err is None:
            return "(stderr went to the terminal: -s)"
        text = self.err.tail(lines, start_at="Fatal Python error")
        return f"last lines of its stderr:\n{text}" if text else "(its stderr was empty)"
