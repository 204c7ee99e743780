"""The parent's run loop when heavy modules are isolated (pytest-heavy's ``DSession``).

Parent units run in-process as usual. Each heavy unit runs in a child; its events arrive on a
queue and are re-emitted here, in the main thread, through pytest's own hooks (logstart,
logreport, logfinish, warning_recorded), so terminal, junit, ``--lf`` and exit code see exactly
what an in-process run would. The loop also enforces timeouts, contains crashes (the running
test fails, the rest of the module re-runs in a fresh child), kills leftovers, and waits for GPU
memory to come back before the next module starts.
"""

from __future__ import annotations

import os
import queue
import signal
import threading
import time
from typing import Any

import psutil
import pytest

from . import memory, procs, wire
from ._reprs import failure_repr
from .child import deserialize_warning
from .gpu import guard
from .launch.base import Launcher, RefusedError, Started, UnitRequest, fork_unsafe_reason, release_parent_fds
from .plan import Unit
from .report import HeavyRecord
from .state import Run

PHASES = ("setup", "call", "teardown")
EXIT_GRACE_S = 10.0  # after its event stream ends, how long a child may take to exit
KILL_GRACE_S = 5.0  # between SIGTERM and SIGKILL


class Attempt:
    """One child process running (part of) a heavy unit."""

    def __init__(self, started: Started, method: str, monitor: memory.TreeMonitor,
                 baseline_gpu: int | None) -> None:
        self.started = started
        self.method = method
        self.monitor = monitor
        self.baseline_gpu = baseline_gpu
        self.t0 = time.monotonic()
        self.eof = False
        self.exited_at: float | None = None
        self.stop_sent = False
        self.timed_out = False
        self.progress = False  # at least one test started in this attempt
        self.leftovers: list[psutil.Process] = []  # descendants the child still had when it finished
        self.out = procs.Drain(started.stdout) if started.stdout else None
        self.err = procs.Drain(started.stderr) if started.stderr else None

    @property
    def pid(self) -> int:
        return self.started.process.pid


class UnitRun:
    """A heavy unit across its attempts: what is left to run, and what each test has reported."""

    def __init__(self, unit: Unit, items: dict[str, pytest.Item]) -> None:
        assert unit.module is not None
        self.unit = unit
        self.name = unit.module
        self.items = items
        self.pending = [item.nodeid for item in unit.items]
        self.phases: dict[str, dict[str, bool]] = {}  # nodeid -> when -> passed
        self.current: str | None = None
        self.collect_error: str | None = None
        self.attempt: Attempt | None = None
        self.statuses: list[str] = []  # how each attempt's child ended
        self.record = HeavyRecord(unit=self.name, kind="module", start_method="", tests=len(self.pending))
        self.t0 = time.monotonic()


class Controller:
    def __init__(self, session: pytest.Session, run: Run, launchers: dict[str, Launcher],
                 method: str) -> None:
        self.session = session
        self.config = session.config
        self.hook = session.config.hook
        self.run = run
        self.settings = run.settings
        self.launchers = launchers
        self.method = method
        self.events: queue.Queue[tuple[UnitRun, dict[str, Any] | None]] = queue.Queue()
        self.running: list[UnitRun] = []
        self.gpu = run.gpu()
        self.env = procs.child_environment(run.settings, run.hardware)
        self.env["PYTEST_HEAVY_CHILD"] = "1"
        self.fallback_noted = False

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
                else:
                    while len(self.running) >= self.settings.workers or (
                            unit.gpu and self.gpu_child_running()):
                        self.pump(block=True)
                    if not self.stopping():
                        self.launch(UnitRun(unit, {item.nodeid: item for item in unit.items}))
            self.wait_all()
        except KeyboardInterrupt:
            self.kill_all()
            raise
        finally:
            for launcher in self.launchers.values():
                launcher.close()
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

    def gpu_child_running(self) -> bool:
        """On an EXCLUSIVE_PROCESS GPU without MPS only one process may hold a context: one GPU child."""
        return any(ur.unit.gpu for ur in self.running)

    def wait_all(self) -> None:
        while self.running:
            self.pump(block=True)

    def pump(self, block: bool) -> None:
        """Handle queued events, then check every running child for exit and timeout."""
        try:
            ur, event = self.events.get(timeout=0.05) if block else self.events.get_nowait()
            while True:
                self.handle(ur, event)
                ur, event = self.events.get_nowait()
        except queue.Empty:
            pass
        self.stopping()
        for ur in list(self.running):
            self.check(ur)

    # --- starting a child -------------------------------------------------------------------------

    def pick_launcher(self) -> tuple[str, Launcher]:
        method = self.method
        if method == "fork":
            unsafe = fork_unsafe_reason()
            if unsafe:
                method = "spawn"
                if not self.fallback_noted:
                    self.fallback_noted = True
                    self.note(f"fork is unsafe here ({unsafe}); children start with spawn")
        return method, self.launchers[method]

    def launch(self, ur: UnitRun) -> None:
        if ur.unit.gpu:
            refusal = guard.refusal(self.config, f"the child process for {ur.name}")
            if refusal:
                self.refuse(ur, refusal)
                return
        method, launcher = self.pick_launcher()
        env = dict(self.env)
        self.hook.pytest_heavy_child_env(config=self.config, unit=ur.name, env=env)
        maxfail = self.config.getoption("maxfail") or 0
        request = UnitRequest(
            unit=ur.name, nodeids=list(ur.pending),
            paths=sorted({str(ur.items[n].path) for n in ur.pending}),
            maxfail=max(maxfail - self.session.testsfailed, 1) if maxfail else 0,
            items=[ur.items[n] for n in ur.pending], env=env,
        )
        baseline = self.gpu.device_used_mib() if self.gpu else None
        try:
            started = launcher.start(request)
        except RefusedError as exc:  # the forkserver could not fork safely: spawn instead
            self.note(f"{method} refused ({exc}); {ur.name} starts with spawn")
            method, started = "spawn", self.launchers["spawn"].start(request)
        ur.attempt = Attempt(started, method, memory.TreeMonitor(started.process.pid, self.gpu), baseline)
        ur.record.start_method = method
        threading.Thread(target=self._read_events, args=(ur, started), name=f"heavy-events-{ur.name}",
                         daemon=True).start()
        self.running.append(ur)
        self.hook.pytest_heavy_unit_start(config=self.config, unit=ur.name, method=method,
                                          nodeids=request.nodeids)

    def refuse(self, ur: UnitRun, message: str) -> None:
        """A GPU child that would certainly fail with 'device busy': its tests fail now, with the cause."""
        for nodeid in list(ur.pending):
            ur.pending.remove(nodeid)
            self.fail_unstarted(ur, nodeid, f"{nodeid}: {message}")
        ur.statuses.append("not started: the parent holds a CUDA context")
        self.end_unit(ur)

    def _read_events(self, ur: UnitRun, started: Started) -> None:
        with started.events:
            for event in wire.events(started.events):
                self.events.put((ur, event))
        self.events.put((ur, None))

    # --- events from a child ----------------------------------------------------------------------

    def handle(self, ur: UnitRun, event: dict[str, Any] | None) -> None:
        attempt = ur.attempt
        if event is None:
            if attempt:
                attempt.eof = True
            return
        kind = event["event"]
        if kind == "logstart":
            nodeid = event["nodeid"]
            ur.current = nodeid
            if nodeid in ur.pending:
                ur.pending.remove(nodeid)
            if attempt:
                attempt.progress = True
            self.hook.pytest_runtest_logstart(nodeid=nodeid, location=tuple(event["location"]))
        elif kind == "report":
            data = wire.tuples(event["data"])
            report = self.hook.pytest_report_from_serializable(config=self.config, data=data)
            self.log_report(ur, report)
        elif kind == "logfinish":
            ur.current = None
            self.hook.pytest_runtest_logfinish(nodeid=event["nodeid"], location=tuple(event["location"]))
        elif kind == "warning":
            location = event.get("location")
            self.hook.pytest_warning_recorded.call_historic(kwargs=dict(
                warning_message=deserialize_warning(event["message"]), when=event["when"],
                nodeid=event["nodeid"], location=tuple(location) if location else None))
        elif kind == "leftovers" and attempt:
            attempt.leftovers = procs.still_running(event["processes"])
        elif kind == "collecterror":
            ur.collect_error = event["longrepr"]
        elif kind == "missing":
            why = (f"could not be collected in the child process for {ur.name}:\n{ur.collect_error}"
                   if ur.collect_error else
                   f"was not collected in the child process for {ur.name} (collection differs between "
                   "the parent and the child)")
            for nodeid in event["nodeids"]:
                if nodeid in ur.pending:
                    ur.pending.remove(nodeid)
                    self.fail_unstarted(ur, nodeid, f"{nodeid} {why}")

    def log_report(self, ur: UnitRun, report: pytest.TestReport) -> None:
        ur.phases.setdefault(report.nodeid, {})[report.when] = report.passed
        if report.when == "teardown" and ur.attempt:
            peaks = ur.attempt.monitor.peaks
            report.user_properties.append(("heavy_module_peak_rss_mib", round(peaks.rss_mib)))
            if peaks.gpu_mib is not None:
                report.user_properties.append(("heavy_module_peak_gpu_mib", round(peaks.gpu_mib)))
        ur.record.count(report)
        self.hook.pytest_runtest_logreport(report=report)

    # --- reports the parent writes itself ---------------------------------------------------------

    def synthesize(self, ur: UnitRun, nodeid: str, when: str, message: str | None) -> None:
        item = ur.items[nodeid]
        now = time.time()
        report = pytest.TestReport(
            nodeid=nodeid, location=item.location, keywords={k: 1 for k in item.keywords},
            outcome="failed" if message else "passed", when=when,  # type: ignore[arg-type]
            longrepr=failure_repr(item, message) if message else None,
            sections=[], duration=0.0, start=now, stop=now, user_properties=[],
        )
        self.log_report(ur, report)

    def fail_unstarted(self, ur: UnitRun, nodeid: str, message: str) -> None:
        """A test that never ran: reported as an error in setup, like a failing fixture."""
        location = ur.items[nodeid].location
        self.hook.pytest_runtest_logstart(nodeid=nodeid, location=location)
        self.synthesize(ur, nodeid, "setup", message)
        self.synthesize(ur, nodeid, "teardown", None)
        self.hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)

    def fail_current(self, ur: UnitRun, nodeid: str, message: str) -> None:
        """The test that was running when its child died: the first missing phase fails."""
        got = ur.phases.setdefault(nodeid, {})  # log_report adds to this same dict as we go
        failed = False
        for when in PHASES:
            if when in got:
                continue
            if when == "call" and got.get("setup") is False:
                continue  # setup did not pass: pytest would not have called the test
            self.synthesize(ur, nodeid, when, None if failed else message)
            failed = True
        self.hook.pytest_runtest_logfinish(nodeid=nodeid, location=ur.items[nodeid].location)

    # --- a child's end ----------------------------------------------------------------------------

    def check(self, ur: UnitRun) -> None:
        attempt = ur.attempt
        assert attempt is not None
        now = time.monotonic()
        if attempt.exited_at is None and attempt.started.process.poll() is not None:
            attempt.exited_at = now
        timeout = self.settings.timeout
        if timeout and not attempt.timed_out and now - attempt.t0 > timeout and not attempt.eof:
            attempt.timed_out = True
            self.terminate(attempt, dump_stacks=True)
        if attempt.exited_at is not None and not attempt.eof and now - attempt.exited_at > 2.0:
            # a grandchild still holds the event pipe open: its session is killed, which ends the stream
            procs.kill_leftovers(attempt.pid, attempt.monitor.peaks.seen.values())
        if attempt.eof and attempt.exited_at is None:
            attempt.exited_at = attempt.exited_at or self._wait_exit(attempt)
        if attempt.eof and attempt.exited_at is not None:
            self.finish_attempt(ur)

    def _wait_exit(self, attempt: Attempt) -> float | None:
        """The stream ended; give the process a bounded time to exit, then end it."""
        deadline = time.monotonic() + EXIT_GRACE_S
        while attempt.started.process.poll() is None:
            if time.monotonic() > deadline:
                self.terminate(attempt, dump_stacks=False)
                break
            time.sleep(0.01)
        return time.monotonic()

    def terminate(self, attempt: Attempt, dump_stacks: bool) -> None:
        """Stacks to stderr (timeout), then SIGTERM, then SIGKILL after a grace period."""
        proc = attempt.started.process
        if dump_stacks:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + KILL_GRACE_S
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            while proc.poll() is None:
                time.sleep(0.01)

    def finish_attempt(self, ur: UnitRun) -> None:
        attempt = ur.attempt
        assert attempt is not None
        peaks = attempt.monitor.stop()
        ur.record.killed += procs.kill_leftovers(attempt.pid, [*peaks.seen.values(), *attempt.leftovers])
        for drain in (attempt.out, attempt.err):
            if drain:
                drain.join(timeout=5)
        os.close(attempt.started.control)
        release_parent_fds(*attempt.started.parent_fds)  # the streams are closed at EOF by their readers
        returncode = attempt.started.process.poll()
        ur.record.peak_rss_mib = max(ur.record.peak_rss_mib, peaks.rss_mib)
        if peaks.gpu_mib is not None:
            ur.record.peak_gpu_mib = max(ur.record.peak_gpu_mib or 0.0, peaks.gpu_mib)
        died = procs.signal_name(returncode if returncode is not None else -signal.SIGKILL)
        status = "timeout" if attempt.timed_out else died
        ur.statuses.append("stopped" if attempt.stop_sent and not ur.current else status)
        broken = ur.current is not None or (ur.pending and not attempt.stop_sent)
        if broken:
            self.contain(ur, attempt, status)
        pids = guard.context_pids(self.config, {attempt.pid, *peaks.seen}) if ur.unit.gpu else None
        release = memory.wait_released(self.gpu, attempt.baseline_gpu, self.settings.vram_tolerance_mib,
                                       self.settings.release_timeout, pids=pids)
        ur.record.released = release.text()
        ur.record.gpu_before_mib = attempt.baseline_gpu
        ur.record.gpu_after_mib = self.gpu.device_used_mib() if self.gpu else None
        if broken and ur.pending and attempt.progress and not self.stopping():
            ur.record.restarts += 1
            self.running.remove(ur)
            self.launch(ur)  # a fresh child for the tests that had not run: a crash costs one test
            return
        for nodeid in list(ur.pending):
            ur.pending.remove(nodeid)
            if not attempt.stop_sent:
                self.fail_unstarted(ur, nodeid, f"{nodeid} was not run: the child process for {ur.name} "
                                                f"ended ({status}) before reaching it\n{self.tail(attempt)}")
        self.running.remove(ur)
        self.end_unit(ur)

    def end_unit(self, ur: UnitRun) -> None:
        ur.record.exit = ", ".join(ur.statuses)
        ur.record.wall_s = time.monotonic() - ur.t0
        self.run.records.append(ur.record)
        self.hook.pytest_heavy_unit_finish(config=self.config, record=ur.record)

    def contain(self, ur: UnitRun, attempt: Attempt, status: str) -> None:
        """Fail the test that was running when the child died, with the reason and its stderr."""
        nodeid = ur.current
        if nodeid is None:
            return
        ur.current = None
        if attempt.timed_out:
            message = (f"{ur.name} timed out after {self.settings.timeout:g}s (--heavy-timeout) during "
                       f"{nodeid}; the child's Python stacks and stderr:\n{self.tail(attempt, 100)}")
        else:
            message = (f"child process for {ur.name} died with {status} during {nodeid}\n"
                       f"{self.tail(attempt)}")
        self.fail_current(ur, nodeid, message)

    def tail(self, attempt: Attempt, lines: int = 40) -> str:
        """The end of the child's stderr; from faulthandler's header on when it crashed (a forked
        child's stack is deep: the header would fall outside a plain 40-line tail)."""
        if attempt.err is None:
            return "(stderr went to the terminal: -s)"
        text = attempt.err.tail(lines, start_at="Fatal Python error")
        return f"last lines of its stderr:\n{text}" if text else "(its stderr was empty)"

    def kill_all(self) -> None:
        """Ctrl-C: end every child and everything it started."""
        for ur in self.running:
            if ur.attempt:
                ur.attempt.started.process.send_signal(signal.SIGKILL)
                procs.kill_leftovers(ur.attempt.pid, ur.attempt.monitor.peaks.seen.values())
                ur.attempt.monitor.stop()

    def note(self, text: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"pytest-heavy: {text}", yellow=True)
