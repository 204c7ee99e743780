"""The parent's run loop when heavy modules are isolated (pytest-heavy's ``DSession``).

Parent units run in-process as usual. Each heavy unit runs in a child; its events arrive on a
queue and are re-emitted in the main thread through pytest's own hooks (``replay.py``). The loop
starts children (``launch/``), enforces timeouts and ends children (``supervise.py``), and decides
what follows a crash: the running test fails, and the rest of the module re-runs in a fresh child
as long as the previous child made progress, so each crash costs exactly one test.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any

import pytest

from .. import procs, report, supervise, wire
from ..gpu import guard
from ..split.durations import ModulePeaks
from ..state import Run
from . import schedule
from .launch import Launchers
from .launch.base import Started, release_parent_fds
from .plan import Unit
from .replay import Replay
from .schedule import Placement
from .units import Attempt, UnitRun


class Controller:
    def __init__(self, session: pytest.Session, run: Run, launchers: Launchers,
                 peaks: Mapping[str, ModulePeaks] | None = None) -> None:
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
        self.scheduler = schedule.make(run.settings, run.hardware, peaks or {})
        self.queue: list[UnitRun] = []  # ready to start, in the order the loop released them
        self.t_first: float | None = None  # when the first child started

    # --- the loop ---------------------------------------------------------------------------------

    def run_units(self, units: list[Unit]) -> None:
        parent_items = [item for unit in units if unit.module is None for item in unit.items]
        next_parent = dict(zip(parent_items, [*parent_items[1:], None], strict=False))  # no items: no pairs
        runs = [UnitRun(unit) for unit in units if unit.module is not None]
        if self.scheduler.reorders:  # every heavy module is ready at once; the scheduler picks the order
            self.queue = list(runs)
        heavy = iter(runs)
        try:
            for unit in units:
                if self.stopping():
                    break
                if unit.module is None:
                    # A parent unit with GPU tests may need whole GPUs: no packed child beside it.
                    alone = (self.settings.workers == 1 and not self.settings.packing) or (
                        self.settings.packing and unit.gpus > 0 and bool(self.run.hardware.gpus))
                    if alone:
                        self.wait_all()
                    for item in unit.items:
                        item.ihook.pytest_runtest_protocol(item=item, nextitem=next_parent[item])
                        self.pump(block=False)
                        if self.stopping():
                            break
                        if not alone:
                            self.fill()
                    continue
                ur = next(heavy)
                if self.scheduler.reorders:
                    self.fill()
                    continue
                self.queue.append(ur)
                while ur in self.queue and not self.stopping():  # collection order: it starts before we go on
                    if not self.fill():
                        self.pump(block=True)
            while (self.queue or self.running) and not self.stopping():  # OOM re-runs join the queue late
                if not self.fill():
                    self.pump(block=True)
            self.wait_all()
        except KeyboardInterrupt:
            self.kill_all()
            raise
        finally:
            self.launchers.close()
        if self.settings.packing and self.t_first is not None:
            self.run.schedule = report.schedule_line(self.run.records, time.monotonic() - self.t_first,
                                                     len(self.run.hardware.gpus))
        if self.session.shouldfail:
            raise self.session.Failed(self.session.shouldfail)
        if self.session.shouldstop:
            raise self.session.Interrupted(self.session.shouldstop)

    def fill(self) -> bool:
        """Start every queued unit the scheduler places now; True when at least one started."""
        started = False
        while self.queue and not self.stopping():
            picked = self.scheduler.pick([ur.job for ur in self.queue])
            if picked is None:
                break
            job, placement = picked
            ur = next(ur for ur in self.queue if ur.job is job)
            self.queue.remove(ur)
            self.place(ur, placement)
            started = True
        return started

    def place(self, ur: UnitRun, placement: Placement) -> None:
        """Give ``ur`` its GPUs, note who shares them, and start its child."""
        hw = self.run.hardware
        self.scheduler.started(ur.job, placement)
        self.t_first = self.t_first or time.monotonic()
        if ur.attempt is None:
            ur.t0 = time.monotonic()  # its wall time starts with its first child, not in the queue
        ur.placement = placement
        ur.holding = placement.may_share
        ur.record.gpus = placement.indices(hw)
        for other in self.running:
            common = {hw.gpus[i].index for i in set(other.placement.gpus) & set(placement.gpus)}
            if common:
                ur.met(other, common)
                other.met(ur, common)
        self.launch(ur)

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
        """Start a child for the tests ``ur`` has left, where its placement says."""
        refusal = guard.refusal(self.config, f"the child process for {ur.name}") if ur.unit.gpu else None
        if refusal:  # a GPU child that would certainly fail with 'device busy': its tests fail now
            self.replay.fail_pending(ur, lambda nodeid: f"{nodeid}: {refusal}")
            ur.statuses.append("not started: the parent holds a CUDA context")
            return self.end_unit(ur)
        env = {**self.env, **ur.placement.env(self.run.hardware)}
        self.hook.pytest_heavy_child_env(config=self.config, unit=ur.name, env=env)
        maxfail = self.config.getoption("maxfail") or 0
        request = ur.request(env, max(maxfail - self.session.testsfailed, 1) if maxfail else 0)
        positions = ur.placement.gpus or None
        baseline = self.gpu.device_used_mib(positions) if self.gpu else None
        foreign = self.gpu.foreign_mib(positions, set()) if self.gpu and ur.placement.may_share else 0
        method, started = self.launchers.start(request)
        sup = supervise.Supervisor(started.process, self.gpu, baseline, "the child", positions, foreign)
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
        if peaks.gpu_mib is not None:
            record.peak_gpu_mib = max(record.peak_gpu_mib or 0.0, peaks.gpu_mib)
            record.add_gpu_peaks(peaks.gpu_per_device(ur.placement.gpus or None))
        status = "timeout" if attempt.sup.timed_out else procs.signal_name(
            returncode if returncode is not None else -signal.SIGKILL)
        ur.statuses.append("stopped" if attempt.stop_sent and not ur.current else status)
        retry_alone = bool(ur.oom_held) and not self.stopping()
        if ur.oom_held and not retry_alone:
            self.replay.replay_dropped(ur)
        broken = ur.current is not None or (ur.pending and not attempt.stop_sent and not retry_alone)
        if broken:
            self.replay.fail_current(ur, self.crash_message(ur, attempt, status))
        pids = guard.context_pids(self.config, {attempt.pid, *peaks.seen}) if ur.unit.gpu else None
        record.released = attempt.sup.release(self.settings, pids, shared=bool(ur.shared_gpus)).text()
        record.gpu_before_mib = attempt.sup.baseline_gpu
        record.gpu_after_mib = self.gpu.device_used_mib(ur.placement.gpus or None) if self.gpu else None
        self.running.remove(ur)
        if retry_alone:
            return self.retry_alone(ur)
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

    def retry_alone(self, ur: UnitRun) -> None:
        """Tests that ran out of GPU memory while another child shared the GPU: once more, alone. Their
        first reports were never replayed, so each still ends with exactly one outcome."""
        gpus = ",".join(map(str, sorted(ur.shared_gpus)))
        ur.record.note = f"retried alone after OOM while sharing GPU {gpus}"
        ur.oom_held = []
        self.scheduler.finished(ur.job)
        ur.job = dataclasses.replace(ur.job, alone=True)
        ur.shared_gpus = set()
        self.queue.insert(0, ur)

    def end_unit(self, ur: UnitRun) -> None:
        self.scheduler.finished(ur.job)  # every unit ends after it was placed, refused children included
        self.run.records.append(ur.finish())
        self.hook.pytest_heavy_unit_finish(config=self.config, record=ur.record)

    def kill_all(self) -> None:
        """Ctrl-C: end every child and everything it started."""
        for ur in self.running:
            if ur.attempt:
                ur.attempt.started.process.send_signal(signal.SIGKILL)
                ur.attempt.sup.reap()

