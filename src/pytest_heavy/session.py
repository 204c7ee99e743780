"""The hooks of a session that opted in, registered as one plugin object by ``plugin.pytest_configure``.

A session that did not opt in never registers this object, so it pays for none of these hooks (nor
for importing what they use); only ``plugin.py``'s option declarations and one header line remain.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any

import pytest

from . import gating, markers, report, tiers
from .isolation import plan
from .records import DurationsError, ModulePeaks, Store
from .state import Run
from .wire import LIVE_LOG_KEY, OUTSIDE_KEY


class HeavySession:
    def __init__(self, config: pytest.Config, run: Run) -> None:
        self.config = config
        self.run = run
        self.session: pytest.Session | None = None
        self.params_files: list[str] = []  # written for children, removed at the session's end

    def pytest_report_header(self) -> list[str]:
        hardware, tier = self.run.hardware.summary(), tiers.describe(self.config, self.run.settings)
        return [f"heavy: {hardware}", f"heavy tier: {tier}"]

    @pytest.hookimpl(trylast=True)  # after the fixture manager and every plugin's session start
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        run = self.run
        self.session = session
        if not isolation_possible(self.config, run) or self.config.pluginmanager.has_plugin("dsession"):
            return  # xdist's controller runs no test: no template
        if xdist_worker(self.config):
            from .isolation import xdist_worker as worker

            peaks = functools.partial(recorded_peaks, self.config, run)
            if not worker.register(self.config, run, self.note, peaks):  # a --dist mode that splits modules
                return
        from .isolation import junit, threads

        shared_log_file(self.config)
        junit.announce(self.config)
        threads.record_thread_baseline()  # before any test module is imported: plugins' threads are known
        if run.settings.template:
            from .isolation.launch import preload

            preload.start_template(self.config, run)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Tiers, then gating: both read each item's markers through ``markers.closest``, built once."""
        run = self.run
        if run.settings.child:
            return
        run.tier_deselected = tiers.deselect_slow(self.config, run.settings, items)
        reasons: dict[str, str] = {}
        for item in items:
            needs = markers.needs_or_usage_error(item, run.settings)
            reason = gating.verdict(needs, run.settings, run.hardware)
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))
                reasons[item.nodeid] = reason
        if reasons:
            run.gated = gating.GatedReports(reasons)
            self.config.pluginmanager.register(run.gated, "heavy-gated")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        """Take over the run loop when heavy modules are to be isolated; otherwise leave it to pytest."""
        config, run = self.config, self.run
        blocker = plan.isolation_blocker(config)
        if blocker and not run.settings.child and run.settings.isolate != "never":
            config.get_terminal_writer().line(f"pytest-heavy: {blocker}", yellow=True)
        if xdist_worker(config):
            return None  # xdist's WorkerInteractor runs the loop; heavy modules: isolation/xdist_worker.py
        units = None
        collection_ok = not session.testsfailed or config.option.continue_on_collection_errors
        if isolation_possible(config, run) and collection_ok:
            units = plan.plan(session.items, run.settings, run.hardware)
        if units is None:
            if run.template is not None:
                run.template.close()
            return None
        from .isolation import launch
        from .isolation.controller import Controller

        try:
            peaks = recorded_peaks(config, run)
        except pytest.UsageError:
            if run.template is not None:
                run.template.close()
            raise
        method = launch.resolve(run.settings)
        launchers = launch.Launchers(session, method, run.template, note=self.note,
                                     template_missing=run.template_missing)
        Controller(session, run, launchers, peaks).run_units(units)
        return True

    @pytest.hookimpl(tryfirst=True)
    def pytest_report_from_serializable(self, data: dict[str, Any]) -> pytest.TestReport | None:
        """A child's report: its live-log text printed first (see ``child.LiveLogTap``), junit
        records applied (``isolation.junit``), and a report rebuilt as in-process where pytest's own
        rebuilding differs (``isolation.longrepr``, ``isolation.subtests``). Not in an xdist
        controller: its workers' reports are xdist's to rebuild."""
        if self.config.pluginmanager.has_plugin("dsession"):
            return None
        live_log = data.pop(LIVE_LOG_KEY, None)
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        outside = data.pop(OUTSIDE_KEY, None)
        if outside and reporter is not None:  # past the terminal writer, as the test's own writes were
            reporter._tw._file.write(outside)
            reporter._tw._file.flush()
        if live_log and reporter is not None:  # the child's log_cli output, just before its report
            reporter.write(live_log)
        from .isolation import junit, longrepr, subtests

        junit.apply(self.config, data)  # what the child's tests recorded for junit
        return longrepr.rebuild(data) or subtests.rebuild(data)

    def pytest_heavy_child_env(self, unit: str, env: dict[str, str]) -> None:
        """Tell the child where tmp_path directories go (``child.share_basetemp``), and hand a
        fresh interpreter the parameters of the unit's tests when its hash order differs from ours
        (``isolation.params``)."""
        from .isolation import child, params

        # Made now, once, by the parent (a given --basetemp emptied once, retention applied once); a
        # fork inherits it, and the others are told where it is.
        factory = getattr(self.config, "_tmp_path_factory", None)
        if factory is not None:
            env[child.BASETEMP_ENV] = str(factory.getbasetemp())
        session = self.session
        if session is None or not params.hash_order_differs():
            return
        path = params.write([item for item in session.items if plan.module_of(item) == unit])
        if path is not None:
            env[params.PARAMS_ENV] = path
            self.params_files.append(path)

    def note(self, text: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"pytest-heavy: {text}", yellow=True)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: object) -> None:
        """pytest-xdist's controller, a worker starting: whether it isolates, where it publishes."""
        from .isolation import xdist_controller

        xdist_controller.configure_node(self.config, node, isolation_possible(self.config, self.run))

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: object) -> object:
        """pytest-xdist's controller: a scheduler that sends each heavy module to one worker whole."""
        from .isolation import xdist_controller

        return xdist_controller.make_scheduler(config, log, isolation_possible(config, self.run))

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: object, error: object) -> None:
        """pytest-xdist's controller: a worker ended; its heavy-table rows, or the modules it ran
        unisolated."""
        from .isolation import xdist_controller

        xdist_controller.node_down(self.run, node)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        run = self.run
        if run.gated is not None:
            report.gated_summary(terminalreporter, run.gated.gated, len(run.gated.theirs))
        tiers.summary(terminalreporter, run.tier_deselected)
        report.heavy_table(terminalreporter, run.records, run.schedule)
        if self.config.pluginmanager.has_plugin("dsession"):
            heavy_workers = run.settings.workers > 1 or run.settings.packing
            report.xdist_line(terminalreporter, run.in_xdist_workers, str(self.config.getvalue("dist")),
                              heavy_workers and bool(run.records or run.in_xdist_workers))

    def pytest_sessionfinish(self) -> None:
        run = self.run
        if self.config.pluginmanager.has_plugin("dsession"):
            from .isolation import xdist_controller

            xdist_controller.cleanup(self.config)
        for path in self.params_files:
            os.unlink(path)
        if run.template is not None:  # a session that never reached its run loop (an interrupted collection)
            run.template.close()
        if run.settings.report_path and not run.settings.child:
            report.write_json(run.settings.report_path, run.records, json.loads(run.hardware.to_json()),
                              run.report_extra)


def shared_log_file(config: pytest.Config) -> None:
    """Children append to the parent's ``--log-file`` (or ini ``log_file``): they are handed its
    absolute path, and the parent's handler appends from now on (``child.append_to_log_file``)."""
    from .isolation import child

    plugin = config.pluginmanager.get_plugin("logging-plugin")
    handler = getattr(plugin, "log_file_handler", None)
    path = getattr(handler, "baseFilename", None)
    if handler is None or not path or path == os.devnull:
        return
    config.option.log_file = path
    child.append_to_log_file(config, handler)


def isolation_possible(config: pytest.Config, run: Run) -> bool:
    return not (run.settings.child or run.settings.isolate == "never" or config.option.collectonly
                or plan.isolation_blocker(config))


def xdist_worker(config: pytest.Config) -> bool:
    """A pytest-xdist worker: its run loop belongs to xdist's WorkerInteractor, which hands it
    items one at a time; taking the loop over would break the worker."""
    return hasattr(config, "workerinput")


def recorded_peaks(config: pytest.Config, run: Run) -> dict[str, ModulePeaks]:
    """What --heavy-workers auto packs by; a store it cannot read is a usage error naming the file."""
    if not run.settings.packing:
        return {}
    try:
        return Store(config, run.settings.durations_path).read_peaks()
    except DurationsError as exc:
        raise pytest.UsageError(f"--heavy-workers auto: {exc}") from None
