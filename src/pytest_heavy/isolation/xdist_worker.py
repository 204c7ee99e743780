"""Heavy isolation inside a pytest-xdist worker: each heavy module runs in a child of the worker.

A worker's run loop belongs to xdist's ``WorkerInteractor``: it hands the worker one test at a time and
sends each report to the controller tagged with the index of the test it is running (and asserts that
they match). So the loop is left alone: when it reaches the first test of a heavy module, the whole
module runs in one child through the usual machinery (``Controller``, ``UnitRun``, ``Attempt``), its
events are held per test, and each test's events are replayed when xdist's loop reaches that test; the
reports then reach the controller as the worker's own. The controller's scheduler
(``xdist_controller``) sends a heavy module to one worker whole, which is what makes this correct.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from .. import wire
from ..markers import module_of
from ..memory import Peaks
from ..records import ModulePeaks
from ..report import HeavyRecord
from ..state import Run
from ..wire import LogFinish, LogStart
from . import launch
from .plan import Unit

INPUT_KEY = "pytest_heavy"  # in workerinput: {"dir": where workers publish, "isolate": bool, "mode": str}
RECORDS_KEY = "heavy_records"  # in workeroutput: the heavy-table rows of the children this worker ran


def told(config: pytest.Config) -> dict[str, Any]:
    """What the controller told this worker (``pytest_configure_node``); empty from an older one."""
    return dict(getattr(config, "workerinput", {}).get(INPUT_KEY) or {})


def publish(config: pytest.Config, items: list[pytest.Item], units: list[Unit]) -> None:
    """Write which node ids belong to which heavy module, for the controller's scheduler to read before
    it hands out any test (it collects nothing itself). Every module a heavy unit stands for counts,
    its skipped tests too: the scheduler keeps the whole module on one worker."""
    directory = told(config).get("dir")
    if not directory:
        return
    modules = {unit.module for unit in units if unit.module}
    heavy = {item.nodeid: module_of(item) for item in items if module_of(item) in modules}
    worker = config.workerinput["workerid"]  # type: ignore[attr-defined]
    tmp = Path(directory, f".{worker}.json")
    tmp.write_text(json.dumps(heavy))
    tmp.replace(Path(directory, f"{worker}.json"))  # whole or absent, never half written


def register(config: pytest.Config, run: Run, note: Callable[[str], None],
             peaks: Callable[[], Mapping[str, ModulePeaks]]) -> bool:
    """In a session that may isolate: plan at the end of this worker's collection. True when its heavy
    modules are to be isolated (the controller's ``--dist`` mode keeps each module on one worker), so a
    template is worth forking. ``peaks``: what ``--heavy-workers auto`` places children by."""
    plugin = WorkerIsolation(config, run, note, peaks)
    config.pluginmanager.register(plugin, "heavy-xdist-worker")
    if plugin.isolate:
        fork_safe_worker(config)
    return plugin.isolate


class Held:
    """The replayer for a worker: a test's logstart, reports and logfinish are held under its node id
    until xdist's loop reaches that test (``flush``); warnings go out at once (xdist sends them without
    a test index)."""

    def __init__(self, replay: Any) -> None:
        self.replay = replay
        self.held: dict[str, list[Callable[[], None]]] = {}
        self.last: str | None = None  # the test whose events came last: where an interrupt happened

    def _hold(self, nodeid: str, call: Callable[[], None]) -> None:
        self.held.setdefault(nodeid, []).append(call)
        self.last = nodeid

    def logstart(self, event: LogStart) -> None:
        self._hold(event["nodeid"], lambda: self.replay.logstart(event))

    def report(self, event: Any) -> pytest.TestReport:
        report: pytest.TestReport = self.replay.report(event)
        return report

    def logreport(self, report: pytest.TestReport, peaks: Peaks | None) -> None:
        self._hold(report.nodeid, lambda: self.replay.logreport(report, peaks))

    def logfinish(self, event: LogFinish) -> None:
        self._hold(event["nodeid"], lambda: self.replay.logfinish(event))

    def warning(self, event: Any) -> None:
        self.replay.warning(event)

    def flush(self, nodeid: str) -> None:
        for call in self.held.pop(nodeid, []):
            call()


class WorkerIsolation:
    """Registered in a worker whose controller isolates: plans at the end of collection, then runs each
    heavy module in a child when xdist's loop reaches its first test."""

    def __init__(self, config: pytest.Config, run: Run, note: Callable[[str], None],
                 peaks: Callable[[], Mapping[str, ModulePeaks]]) -> None:
        self.config, self.run, self.note, self.peaks = config, run, note, peaks
        self.isolate = bool(told(config).get("isolate"))
        self.units: dict[str, Unit] = {}  # node id -> its heavy unit
        self.done: set[str] = set()  # modules whose child(ren) already ran
        self.controller: Any = None  # isolation.controller.Controller, made for the first heavy module
        self.held: Held | None = None
        self.interrupt: tuple[str | None, wire.Interrupt] | None = None  # (after which test, what)

    @pytest.hookimpl(tryfirst=True)  # before xdist's own hook sends "collectionfinish" to the controller
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        from .plan import plan

        config, run = self.config, self.run
        collection_ok = not session.testsfailed or config.option.continue_on_collection_errors
        units = plan(session.items, run.settings, run.hardware) if collection_ok else None
        heavy = [unit for unit in units or [] if unit.module]
        publish(config, session.items, heavy)
        if heavy and not self.isolate:  # a --dist mode that may split a module: unisolated, said once
            config.workeroutput["heavy_modules"] = sorted(str(u.module) for u in heavy)  # type: ignore[attr-defined]
        if heavy and self.isolate:
            self.units = {item.nodeid: unit for unit in heavy for item in unit.items}
        elif run.template is not None:
            run.template.close()
            run.template = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        """A heavy module's test: its module's child ran (now, at its first test), its events replayed."""
        unit = self.units.get(item.nodeid)
        if unit is None:
            return None
        assert unit.module is not None
        if unit.module not in self.done:
            self.done.add(unit.module)
            self.run_unit(item.session, unit)
        assert self.held is not None
        self.held.flush(item.nodeid)
        if self.interrupt is not None and self.interrupt[0] in (item.nodeid, None):
            from .replay import reraise

            reraise(self.interrupt[1])  # after the test that called pytest.exit(), as in-process
        return True

    def run_unit(self, session: pytest.Session, unit: Unit) -> None:
        """Run one heavy unit to its end in a child (a crash restarts it, as without -n), events held."""
        from .units import UnitRun

        controller = self.controller or self.start(session)
        ur = UnitRun(unit)
        controller.ready.add(ur)
        try:
            controller.start_soon(lambda: bool(controller.ready.units or controller.running))
            controller.wait_all()
        except KeyboardInterrupt:
            for attempt in controller.running.values():  # Ctrl-C: end the child and everything it started
                attempt.kill()
            raise
        if controller.interrupted is not None:
            assert self.held is not None
            self.interrupt = (self.held.last, controller.interrupted)

    def start(self, session: pytest.Session) -> Any:
        from .controller import Controller

        run = self.run
        launchers = launch.Launchers(session, launch.resolve(run.settings), run.template, note=self.note,
                                     template_missing=run.template_missing)
        self.controller = Controller(session, run, launchers, self.peaks())
        # Other workers' children may use the same GPUs meanwhile: what they hold is not this child's.
        self.controller.beside_others = True
        self.held = Held(self.controller.replay)
        self.controller.replay = self.held
        return self.controller

    def pytest_sessionfinish(self) -> None:
        """Children done: close the launchers (the template too), hand the rows to the controller."""
        if self.controller is not None:
            self.controller.launchers.close()
            self.run.template = None
        worker = self.config.workerinput["workerid"]  # type: ignore[attr-defined]
        rows = [to_wire(record, worker) for record in self.run.records]
        self.config.workeroutput[RECORDS_KEY] = rows  # type: ignore[attr-defined]


def to_wire(record: HeavyRecord, worker: str) -> dict[str, Any]:
    """A heavy-table row as plain data execnet can send, naming the worker (the table's start column)."""
    row = dataclasses.asdict(record)
    row["ran"] = sorted(record.ran)
    row["samples"] = [list(sample) for sample in record.samples]
    row["worker"] = worker
    return row


def from_wire(row: dict[str, Any]) -> HeavyRecord:
    """The controller's copy of a worker's row."""
    fields = {f.name for f in dataclasses.fields(HeavyRecord)}
    record = HeavyRecord(**{k: v for k, v in row.items() if k in fields})
    record.ran = set(row.get("ran", ()))
    record.samples = [tuple(sample) for sample in row.get("samples", ())]  # type: ignore[misc]
    return record


def fork_safe_worker(config: pytest.Config) -> None:
    """A process forked from this worker (a fork child, the template) is not the worker: it must never
    write to xdist's channel (xdist's ``WorkerInteractor`` sends every report of the worker's config
    over it, and a fork child's would reach the controller as the worker's), and a fork child runs its
    tests itself (``WorkerIsolation`` would skip them as already run). Both are unregistered in every
    process forked from here."""
    def not_the_worker() -> None:
        for plugin in config.pluginmanager.get_plugins():
            # xdist's class is defined in its channel code, not importable
            if type(plugin).__name__ == "WorkerInteractor" or isinstance(plugin, WorkerIsolation):
                config.pluginmanager.unregister(plugin)

    os.register_at_fork(after_in_child=not_the_worker)
