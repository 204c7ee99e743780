"""The parent's run loop when heavy modules are isolated (pytest-heavy's ``DSession``).

Parent units run in-process as usual. Each heavy unit runs in a child; its events arrive on a
queue and are re-emitted in the main thread through pytest's own hooks (``replay.py``). The loop
starts children (``launch/``), enforces timeouts and ends children (``supervise.py``), and decides
what follows a crash: the running test fails, and the rest of the module re-runs in a fresh child
as long as the previous child made progress, so each crash costs exactly one test.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
from typing import Any

import pytest

from .. import procs, supervise, wire
from ..gpu import guard
from ..state import Run
from .launch import Launchers
from .launch.base import Started, release_parent_fds
from .plan import Unit
from .replay import Replay
from .units import Attempt, UnitRun


class Controller:
    def __init__(self, session: pytest.Session, run: Run, launchers: Launchers) -> None:
        self.session = session
        self.config = session.config
        self.hook = session.config.hook
        self.run = run
        self.settings = run.settings
        self.launchers = launchers
        self.replay = Replay(session.config)
        self.events: queue.Queue[tuple[UnitRun, dict[str, Any] | None]] = queue.Queue()
        self.running: list[UnitRun] = []
        self.gpu = run.gpu()
        self.env = supervise.child_environment(run.settings, run.hardware, isolated=True)

    # --- the loop ---------------------------------------------------------------------------------

    def run_units(self, units: list[Unit]) -> None:
        parent_items = [item for unit in units if unit.module is None for item in unit.items]
        next_parent = dict(zip(parent_items, [*parent_items[1:], None], strict=False))  # no items: no pairs
        try:
            for unit in units:
                if self.stopping():
                    break
                if unit.module is None:
                    if self.settings.workers == 1:
                        self.wait_all()
                    for item in unit.items:
                        item.ihook.pytest_runtest_protocol(item=item, nextitem=next_parent[item])
                        self.pump(block=False)
                        if self.stopping():
                            break
                    continue
                # On an EXCLUSIVE_PROCESS GPU without MPS only one process may hold a context: one GPU child.
                while len(self.running) >= self.settings.workers or (
                        unit.gpu and any(ur.unit.gpu for ur in self.running)):
                    self.pump(block=True)
                if not self.stopping():
                    self.launch(UnitRun(unit))
            self.wait_all()
        except KeyboardInterrupt:
            self.kill_all()
            raise
        finally:
            self.launchers.close()
        if self.session.shouldfail:
            raise self.session.Failed(self.session.shouldfail)
        if self.session.shouldstop:
            raise self.session.Interrupted(self.session.shouldstop)

    def stopping(self) -> bool:
        """True once -x/--maxfail or a stop request ended the session; running children are told."""
        if not (self.session.shouldfail or self.session.shouldstop):
            return False
        for ur in self.running:
            if ur.attempt and not ur.attempt.stop_sent:
                ur.attempt.stop_sent = True
                try:
                    os.write(ur.attempt.started.control, b"stop\n")
                except OSError:
                    pass
        return True

    def wait_all(self) -> None:
        while self.running:
            self.pump(block=True)

    def pump(self, block: bool) -> None:
        """Handle queued events, then check every running child for exit and timeout."""
        try:
            ur, event = self.events.get(timeout=0.05) if block else self.events.get_nowait()
            while True:
                self.replay.handle(ur, event)
                ur, event = self.events.get_nowait()
        except queue.Empty:
            pass
        self.stopping()
        for ur in list(self.running):
            self.check(ur)

    # --- starting a child -------------------------------------------------------------------------

    def launch(self, ur: UnitRun) -> None:
        refusal = guard.refusal(self.config, f"the child process for {ur.name}") if ur.unit.gpu else None
        if refusal:  # a GPU child that would certainly fail with 'device busy': its tests fail now
            self.replay.fail_pending(ur, lambda nodeid: f"{nodeid}: {refusal}")
            ur.statuses.append("not started: the parent holds a CUDA context")
            return self.end_unit(ur)
        env = dict(self.env)
        self.hook.pytest_heavy_child_env(config=self.config, unit=ur.name, env=env)
        maxfail = self.config.getoption("maxfail") or 0
        request = ur.request(env, max(maxfail - self.session.testsfailed, 1) if maxfail else 0)
        baseline = self.gpu.device_used_mib() if self.gpu else None
        method, started = self.launchers.start(request)
        sup = supervise.Supervisor(started.process, self.gpu, baseline, "the child")
        ur.attempt = Attempt(started, method, sup)
        ur.record.start_method = method
        threading.Thread(target=self._read_events, args=(ur, started), name=f"heavy-events-{ur.name}",
                         daemon=True).start()
        self.running.append(ur)
        self.hook.pytest_heavy_unit_start(config=self.config, unit=ur.name, method=method,
                                          nodeids=request.nodeids)

    def _read_events(self, ur: UnitRun, started: Started) -> None:
        with started.events:
            for event in wire.events(started.events):
                self.events.put((ur, event))
        self.events.put((ur, None))

    # --- a child's end ----------------------------------------------------------------------------

    def check(self, ur: UnitRun) -> None:
        assert ur.attempt is not None
        if ur.attempt.settle(self.settings.timeout):
            self.finish_attempt(ur, ur.attempt)

    def finish_attempt(self, ur: UnitRun, attempt: Attempt) -> None:
        peaks = attempt.sup.reap(attempt.leftovers)
        for drain in (attempt.out, attempt.err):
            if drain:
                drain.join(timeout=5)
        os.close(attempt.started.control)
        release_parent_fds(*attempt.started.parent_fds)  # the streams are closed at EOF by their readers
        returncode = attempt.started.process.poll()
        record = ur.record
        record.killed = [*record.killed, *attempt.sup.killed]
        record.peak_rss_mib = max(record.peak_rss_mib, peaks.rss_mib)
        record.samples += peaks.samples
        if peaks.gpu_mib is not None:
            record.peak_gpu_mib = max(record.peak_gpu_mib or 0.0, peaks.gpu_mib)
        status = "timeout" if attempt.sup.timed_out else procs.signal_name(
            returncode if returncode is not None else -signal.SIGKILL)
        ur.statuses.append("stopped" if attempt.stop_sent and not ur.current else status)
        broken = ur.current is not None or (ur.pending and not attempt.stop_sent)
        if broken:
            self.replay.fail_current(ur, self.crash_message(ur, attempt, status))
        pids = guard.context_pids(self.config, {attempt.pid, *peaks.seen}) if ur.unit.gpu else None
        record.released = attempt.sup.release(self.settings, pids).text()
        record.gpu_before_mib = attempt.sup.baseline_gpu
        record.gpu_after_mib = self.gpu.device_used_mib() if self.gpu else None
        self.running.remove(ur)
        if broken and ur.pending and attempt.progress and not self.stopping():
            record.restarts += 1
            return self.launch(ur)  # a fresh child for the tests that had not run: a crash costs one test
        if not attempt.stop_sent:
            self.replay.fail_pending(ur, lambda nodeid: f"{nodeid} was not run: the child process for "
                                                        f"{ur.name} ended ({status}) before reaching it\n"
                                                        f"{attempt.tail()}")
        ur.pending.clear()
        self.end_unit(ur)

    def crash_message(self, ur: UnitRun, attempt: Attempt, status: str) -> str:
        if attempt.sup.timed_out:
            return (f"{ur.name} timed out after {self.settings.timeout:g}s (--heavy-timeout) during "
                    f"{ur.current}; the child's Python stacks and stderr:\n{attempt.tail(100)}")
        return f"child process for {ur.name} died with {status} during {ur.current}\n{attempt.tail()}"

    def end_unit(self, ur: UnitRun) -> None:
        self.run.records.append(ur.finish())
        self.hook.pytest_heavy_unit_finish(config=self.config, record=ur.record)

    def kill_all(self) -> None:
        """Ctrl-C: end every child and everything it started."""
        for ur in self.running:
            if ur.attempt:
                ur.attempt.started.process.send_signal(signal.SIGKILL)
                ur.attempt.sup.reap()
