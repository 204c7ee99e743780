"""The parent's run loop when heavy modules are isolated (pytest-heavy's ``DSession``).

Parent units run in-process as usual. Each heavy unit runs in a child placed by the scheduler
(``schedule/``) and owned from launch to reap by an ``Attempt`` (``launch/attempt.py``); its events are
handled here, one short ``on_<event>`` method each, and the unit's books (``units.py``) say what to
replay through pytest's own hooks (``replay.py``). After a crash the running test fails and the rest of
the module re-runs in a fresh child as long as the previous one made progress: a crash costs one test.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import sys
from collections.abc import Callable, Mapping

import pytest

from .. import supervise, wire
from ..gpu import guard
from ..records import ModulePeaks
from ..state import Run
from . import schedule, stops
from .launch import Launchers
from .launch.attempt import Attempt, Staged
from .plan import Unit
from .ready import Ready
from .replay import Replay, reraise
from .units import Replayable, UnitRun


class Controller:
    def __init__(self, session: pytest.Session, run: Run, launchers: Launchers,
                 peaks: Mapping[str, ModulePeaks] | None = None) -> None:
        self.session, self.config, self.hook = session, session.config, session.config.hook
        self.run, self.settings, self.launchers = run, run.settings, launchers
        self.replay = Replay(session.config, run.settings.junit_properties)
        # Each child's events, as the lists its reader read at once (None: the end of its stream).
        self.inbox: queue.Queue[tuple[UnitRun, Attempt, list[wire.Message] | None]] = queue.Queue()
        self.interrupted: wire.Interrupt | None = None  # the first child's pytest.exit() or Ctrl-C
        self.running: dict[UnitRun, Attempt] = {}  # each running unit's child
        self.gpu = run.gpu()
        self.env = supervise.child_environment(run.settings, run.hardware, isolated=True)
        self.ready = Ready(schedule.make(run.settings, run.hardware, peaks or {}), run.hardware)
        self.beside_others = False  # other processes run children on these GPUs too (pytest-xdist's workers)
        self.upcoming: list[UnitRun] = []  # heavy units yet to start, in the order they will (stage_next)
        self.staged: dict[UnitRun, Staged] = {}  # started ahead of their turn (go_early)

    def run_units(self, units: list[Unit]) -> None:
        parent_items = [item for unit in units if unit.module is None for item in unit.items]
        next_parent = dict(zip(parent_items, [*parent_items[1:], None], strict=False))  # no items: no pairs
        runs = {unit.module: UnitRun(unit) for unit in units if unit.module is not None}
        reorders = self.ready.scheduler.reorders  # every heavy module ready at once: the scheduler orders
        if reorders:
            self.ready.add(*runs.values())
        elif self.settings.workers == 1:  # one child at a time, in collection order: the next is known
            self.upcoming = list(runs.values())
        try:
            for unit in units:
                if self.stopping():
                    break
                if unit.module is None:
                    self.run_in_parent(unit, next_parent)
                    continue
                if reorders:
                    self.fill()
                    continue
                self.ready.add(ur := runs[unit.module])
                self.start_soon(self.ready.units.__contains__, ur)  # collection order: it starts first
            self.start_soon(lambda: bool(self.ready.units or self.running))  # OOM re-runs come late
            self.wait_all()
        except KeyboardInterrupt:
            for attempt in self.running.values():  # Ctrl-C: end every child and everything it started
                attempt.kill()
            raise
        finally:
            for staged in self.staged.values():  # its turn never came: -x, an interrupt
                staged.discard()
            self.staged.clear()
            self.launchers.close()
        if self.settings.packing:
            self.run.schedule = self.ready.schedule_line(self.run.records)
        if self.interrupted:
            reraise(self.interrupted)  # a child's pytest.exit() or KeyboardInterrupt ends this session too
        if self.session.shouldfail:
            raise self.session.Failed(self.session.shouldfail)
        if self.session.shouldstop:
            raise self.session.Interrupted(self.session.shouldstop)

    def run_in_parent(self, unit: Unit, next_parent: dict[pytest.Item, pytest.Item | None]) -> None:
        """pytest's own protocol for each item; children keep running beside it unless it must be alone
        (a parent unit with GPU tests may need whole GPUs: no packed child beside it)."""
        alone = (self.settings.workers == 1 and not self.settings.packing) or (
            self.settings.packing and unit.gpus > 0 and bool(self.run.hardware.gpus))
        if alone:
            self.wait_all()
        for item in unit.items:
            if self.stopping():  # also a stop replayed while waiting for the children: none too many
                break
            item.ihook.pytest_runtest_protocol(item=item, nextitem=next_parent[item])
            self.step(block=False)
            if not alone:
                self.fill()

    def start_soon(self, waiting: Callable[..., bool], *args: object) -> None:
        """Start ready units, or handle events, while ``waiting(*args)`` holds."""
        while waiting(*args) and not self.stopping():
            if not self.fill():
                self.step(block=True)

    def wait_all(self) -> None:
        while self.running:
            self.step(block=True)

    def fill(self) -> bool:
        """Start every ready unit the scheduler places now; True when at least one started."""
        started = False
        while not self.stopping() and (ur := self.ready.pop(list(self.running))) is not None:
            self.launch(ur)
            started = True
        return started

    def stopping(self) -> bool:
        """True once -x/--maxfail, a stop request or an interrupt ended the session; children are told."""
        if not (self.session.shouldfail or self.session.shouldstop or self.interrupted):
            return False
        for attempt in self.running.values():
            attempt.request_stop()
        return True

    def step(self, block: bool) -> None:
        """Handle the queued events (with ``block``, wait briefly for one), then watch every child."""
        with contextlib.suppress(queue.Empty):
            ur, attempt, batch = self.inbox.get(timeout=0.05) if block else self.inbox.get_nowait()
            while True:
                for event in [None] if batch is None else batch:
                    if not attempt.finished:  # an abandoned stream's late events belong to nothing now
                        attempt.note(event)
                        self.replay_events(ur, attempt, ur.take(event))
                ur, attempt, batch = self.inbox.get_nowait()
        self.go_early()
        for ur, attempt in list(self.running.items()):
            self.stopping()  # told first, also when the end of the child before it stopped the session
            if attempt.watch():
                self.on_exit(ur, attempt)

    def launch(self, ur: UnitRun, restart: bool = False) -> None:
        """Start a child for the tests ``ur`` has left, where its placement says."""
        refusal = guard.refusal(self.config, f"the child process for {ur.name}") if ur.unit.gpu else None
        if refusal:  # a GPU child that would certainly fail with 'device busy': its tests fail now
            self.replay_events(ur, None, ur.refused(refusal))
            return self.end_unit(ur)
        if ur in self.upcoming:
            self.upcoming.remove(ur)
        pinned = ur.placement.env(self.run.hardware)
        env = {**self.env, **pinned}
        staged = self.staged.pop(ur, None)
        if staged is not None and pinned:  # placed on GPUs after all: a child with their environment
            staged.discard()
            staged = None
        if staged is None:  # a staged child's was made as it was staged
            self.hook.pytest_heavy_child_env(config=self.config, unit=ur.name, env=env)
        request = ur.request(env, stops.failures_left(self.session))
        contexts = functools.partial(guard.context_pids, self.config) if ur.unit.gpu else None
        attempt = Attempt.launch(self.launchers, request, placement=ur.placement, settings=self.settings,
                                 gpu=self.gpu, contexts=contexts, staged=staged,
                                 post=lambda attempt, batch: self.inbox.put((ur, attempt, batch)))
        ur.launched(attempt.method, attempt.why, restart)
        self.running[ur] = attempt
        self.hook.pytest_heavy_unit_start(config=self.config, unit=ur.name, method=attempt.method,
                                          nodeids=request.nodeids)
        self.stage_next()

    def stage_next(self) -> None:
        """Start the next heavy unit's child now, while this one runs: it forks (or spawns), starts up
        and collects its module meanwhile, then waits for its turn (``wire.go``), so a module's
        collection in its child costs no wall time once the first module runs. One child waits at a
        time (collection order), and not for a unit that needs a GPU: its module's import may touch
        the GPU the running child uses, whose release is checked before the next one starts."""
        if any(not staged.gone for staged in self.staged.values()) or self.stopping():
            return
        ur = next((ur for ur in self.upcoming if ur not in self.staged), None)
        if ur is None or ur.unit.on_gpu:
            return
        env = dict(self.env)
        self.hook.pytest_heavy_child_env(config=self.config, unit=ur.name, env=env)
        staged = self.launchers.stage(ur.request(env, stops.failures_left(self.session), staged=True))
        if staged is not None:
            self.staged[ur] = Staged(*staged)

    def go_early(self) -> None:
        """The one running child has reported the last of its tests: the staged child, next in line,
        starts its tests now instead of once that one has ended its session (plugins' sessionfinish,
        its leftovers killed), exited (a child that imported a big library takes ~15 ms to unmap its
        memory) and been closed, and the one after it is staged. Its events wait in its pipe until its
        ``Attempt`` reads them, after the one before it ended. Not beside a GPU unit (the next child
        waits for that one's GPU memory to be released), nor once the session stops."""
        if len(self.running) != 1 or not self.ready.units or self.stopping():
            return
        ((ur, attempt),) = self.running.items()
        staged = self.staged.get(self.ready.units[0])
        reported_all = not ur.pending and attempt.current is None and (attempt.progress or attempt.done)
        if staged is None or staged.gone or not reported_all or ur.unit.on_gpu:
            return
        staged.go(stops.failures_left(self.session))
        self.stage_next()

    # --- the events the unit's books return, one short method each ----------------------------------

    def replay_events(self, ur: UnitRun, attempt: Attempt | None, events: list[Replayable]) -> None:
        for event in events:
            kind = "report" if isinstance(event, pytest.TestReport) else event["event"]
            getattr(self, f"on_{kind}")(ur, attempt, event)

    def on_logstart(self, ur: UnitRun, attempt: Attempt | None, event: wire.LogStart) -> None:
        self.replay.logstart(event)

    def on_report(self, ur: UnitRun, attempt: Attempt | None, event: wire.Report | pytest.TestReport) -> None:
        report = event if isinstance(event, pytest.TestReport) else self.replay.report(event)
        ur.count(report)
        self.replay.logreport(report, attempt.peaks if attempt else None)

    def on_logfinish(self, ur: UnitRun, attempt: Attempt | None, event: wire.LogFinish) -> None:
        self.replay.logfinish(event)

    def on_warning(self, ur: UnitRun, attempt: Attempt | None, event: wire.WarningEvent) -> None:
        self.replay.warning(event)

    def on_debugger(self, ur: UnitRun, attempt: Attempt | None, event: wire.Debugger) -> None:
        """The child's pdb is about to use the terminal: what was replayed before it is written out."""
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter._tw.flush()
        sys.stdout.flush()
        if attempt is not None:
            attempt.resume()

    def on_state(self, ur: UnitRun, attempt: Attempt | None, event: wire.SessionState) -> None:
        self.hook.pytest_heavy_merge_session_state(config=self.config, unit=ur.name, state=event["state"])

    def on_interrupt(self, ur: UnitRun, attempt: Attempt | None, event: wire.Interrupt) -> None:
        self.interrupted = self.interrupted or event  # the test has no outcome; the session ends soon

    def on_exit(self, ur: UnitRun, attempt: Attempt) -> None:
        """A child is over: its result into the unit's books; then its tests: re-run, or reported."""
        del self.running[ur]
        ended = attempt.close(shared=bool(ur.shared_gpus) or self.beside_others)
        alone = bool(ur.oom_held) and not self.stopping()  # its tests that ran out of GPU memory: again
        self.replay_events(ur, attempt, ur.took(ended, rerun_dropped=alone))
        if alone:
            self.ready.again_alone(ur)
        elif ur.pending and ended.restartable and not self.stopping():
            self.launch(ur, restart=True)  # a fresh child for the tests that had not run: a crash costs one
        else:
            self.replay_events(ur, attempt, ur.unreached(ended))
            self.end_unit(ur)

    def end_unit(self, ur: UnitRun) -> None:
        self.ready.finished(ur)  # every unit ends after it was placed, refused children included
        self.run.records.append(ur.finish())
        self.hook.pytest_heavy_unit_finish(config=self.config, record=ur.record)
