"""The parent's run loop when heavy modules are isolated (pytest-heavy's ``DSession``).

Parent units run in-process as usual. Each heavy unit runs in a child, started where the scheduler
places it (``schedule/``); its events are re-emitted through pytest's own hooks (``replay.py``). After a
crash the running test fails and the rest of the module re-runs in a fresh child as long as the
previous one made progress, so each crash costs exactly one test.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import pytest

from .. import report, supervise
from ..gpu import guard
from ..split.durations import ModulePeaks
from ..state import Run
from . import schedule, stops
from .launch import Launchers
from .plan import Unit
from .replay import Replay
from .units import Attempt, Ready, UnitRun


class Controller:
    def __init__(self, session: pytest.Session, run: Run, launchers: Launchers,
                 peaks: Mapping[str, ModulePeaks] | None = None) -> None:
        self.session, self.config, self.hook = session, session.config, session.config.hook
        self.run, self.settings, self.launchers = run, run.settings, launchers
        self.replay = Replay(session.config, run.settings.junit_properties)
        self.running: list[UnitRun] = []
        self.gpu = run.gpu()
        self.env = supervise.child_environment(run.settings, run.hardware, isolated=True)
        self.ready = Ready(schedule.make(run.settings, run.hardware, peaks or {}))

    def run_units(self, units: list[Unit]) -> None:
        parent_items = [item for unit in units if unit.module is None for item in unit.items]
        next_parent = dict(zip(parent_items, [*parent_items[1:], None], strict=False))  # no items: no pairs
        runs = [UnitRun(unit) for unit in units if unit.module is not None]
        reorders = self.ready.scheduler.reorders  # every heavy module ready at once: the scheduler orders
        if reorders:
            self.ready.units = list(runs)
        heavy = iter(runs)
        try:
            for unit in units:
                if self.stopping():
                    break
                if unit.module is None:
                    self.run_in_parent(unit, next_parent)
                    continue
                ur = next(heavy)
                if reorders:
                    self.fill()
                    continue
                self.ready.units.append(ur)
                self.start_soon(self.ready.units.__contains__, ur)  # collection order: it starts first
            self.start_soon(lambda: bool(self.ready.units or self.running))  # OOM re-runs come late
            self.wait_all()
        except KeyboardInterrupt:
            self.kill_all()
            raise
        finally:
            self.launchers.close()
        if self.settings.packing and self.ready.t_first is not None:
            self.run.schedule = report.schedule_line(self.run.records, time.monotonic() - self.ready.t_first,
                                                     len(self.run.hardware.gpus))
        self.replay.reraise_interrupt()  # a child's pytest.exit() or KeyboardInterrupt ends this session too
        if self.session.shouldfail:
            raise self.session.Failed(self.session.shouldfail)
        if self.session.shouldstop:
            raise self.session.Interrupted(self.session.shouldstop)

    def run_in_parent(self, unit: Unit, next_parent: dict[pytest.Item, pytest.Item | None]) -> None:
        """pytest's own protocol for each item; children keep running beside it unless it must be alone."""
        # A parent unit with GPU tests may need whole GPUs: no packed child beside it.
        alone = (self.settings.workers == 1 and not self.settings.packing) or (
            self.settings.packing and unit.gpus > 0 and bool(self.run.hardware.gpus))
        if alone:
            self.wait_all()
        for item in unit.items:
            if self.stopping():  # also a stop replayed while waiting for the children: none too many
                break
            item.ihook.pytest_runtest_protocol(item=item, nextitem=next_parent[item])
            self.pump(block=False)
            if not alone:
                self.fill()

    def start_soon(self, waiting: Callable[..., bool], *args: object) -> None:
        """Start ready units, or wait for events, while ``waiting(*args)`` holds."""
        while waiting(*args) and not self.stopping():
            if not self.fill():
                self.pump(block=True)

    def fill(self) -> bool:
        """Start every ready unit the scheduler places now; True when at least one started."""
        started = False
        while not self.stopping() and (picked := self.ready.pop()) is not None:
            ur, placement = picked
            ur.place(placement, self.run.hardware, self.running)  # its GPUs, and who shares them
            self.launch(ur)
            started = True
        return started

    def stopping(self) -> bool:
        """True once -x/--maxfail, a stop request or an interrupt ended the session; children are told."""
        if not (self.session.shouldfail or self.session.shouldstop or self.replay.interrupted):
            return False
        for ur in self.running:
            if ur.attempt:
                ur.attempt.request_stop()
        return True

    def wait_all(self) -> None:
        while self.running:
            self.pump(block=True)

    def pump(self, block: bool) -> None:
        """Handle queued events, then check every running child for exit and timeout."""
        self.replay.drain(block)
        self.stopping()
        for ur in list(self.running):
            self.check(ur)

    def launch(self, ur: UnitRun) -> None:
        """Start a child for the tests ``ur`` has left, where its placement says."""
        refusal = guard.refusal(self.config, f"the child process for {ur.name}") if ur.unit.gpu else None
        if refusal:  # a GPU child that would certainly fail with 'device busy': its tests fail now
            self.replay.fail_pending(ur, lambda nodeid: f"{nodeid}: {refusal}")
            ur.statuses.append("not started: the parent holds a CUDA context")
            return self.end_unit(ur)
        env = {**self.env, **ur.placement.env(self.run.hardware)}
        self.hook.pytest_heavy_child_env(config=self.config, unit=ur.name, env=env)
        request = ur.request(env, stops.failures_left(self.session))
        positions = ur.placement.gpus or None
        baseline = self.gpu.device_used_mib(positions) if self.gpu else None
        foreign = self.gpu.foreign_mib(positions, set()) if self.gpu and ur.placement.may_share else 0
        method, started, why = self.launchers.start(request)
        sup = supervise.Supervisor(started.process, self.gpu, baseline, "the child", positions, foreign)
        ur.attempt = Attempt(started, method, sup)
        ur.record.start_method, ur.record.start_note = method, ur.record.start_note or why
        self.replay.listen(ur, ur.attempt)
        self.running.append(ur)
        self.hook.pytest_heavy_unit_start(config=self.config, unit=ur.name, method=method,
                                          nodeids=request.nodeids)

    # --- a child's end ----------------------------------------------------------------------------

    def check(self, ur: UnitRun) -> None:
        assert ur.attempt is not None
        if ur.attempt.settle(self.settings.timeout):
            self.finish_attempt(ur, ur.attempt)

    def finish_attempt(self, ur: UnitRun, attempt: Attempt) -> None:
        peaks = attempt.close()
        ur.account(attempt, peaks)
        status = attempt.status(ur.current)
        ur.statuses.append(status)
        retry_alone = bool(ur.oom_held) and not self.stopping()
        if ur.oom_held and not retry_alone:
            self.replay.replay_dropped(ur)
        broken = ur.current is not None or (ur.pending and not attempt.stopped and not retry_alone)
        if broken:
            self.replay.fail_current(ur, attempt.crash_message(ur.name, ur.current, self.settings.timeout))
        pids = guard.context_pids(self.config, {attempt.pid, *peaks.seen}) if ur.unit.gpu else None
        ur.account_release(attempt, self.settings, pids)
        self.running.remove(ur)
        if retry_alone:
            return self.retry_alone(ur)
        if broken and ur.pending and attempt.progress and not self.stopping():
            ur.record.restarts += 1
            return self.launch(ur)  # a fresh child for the tests that had not run: a crash costs one test
        if not attempt.stopped:
            self.replay.fail_pending(ur, lambda nodeid: f"{nodeid} was not run: the child process for "
                                                        f"{ur.name} ended ({status}) before reaching it\n"
                                                        f"{attempt.tail()}")
        ur.pending.clear()
        self.end_unit(ur)

    def retry_alone(self, ur: UnitRun) -> None:
        """Tests that ran out of GPU memory while another child shared the GPU: once more, alone, first in
        the queue. Their first reports were never replayed: each still ends with exactly one outcome."""
        self.ready.finished(ur)
        self.ready.units.insert(0, ur.alone_after_oom())

    def end_unit(self, ur: UnitRun) -> None:
        self.ready.finished(ur)  # every unit ends after it was placed, refused children included
        self.run.records.append(ur.finish())
        self.hook.pytest_heavy_unit_finish(config=self.config, record=ur.record)

    def kill_all(self) -> None:
        """Ctrl-C: end every child and everything it started."""
        for ur in self.running:
            if ur.attempt:
                ur.attempt.sup.reap()  # SIGKILL, then whatever of its tree is left

