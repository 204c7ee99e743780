"""The hooks of a session that opted in, registered as one plugin object by ``plugin.pytest_configure``.

A session that did not opt in never registers this object, so it pays for none of these hooks (nor
for importing what they use); only ``plugin.py``'s option declarations and one header line remain.
"""

from __future__ import annotations

import functools
import json
import os
from typing import TYPE_CHECKING, Any

import pytest

from . import gating, markers, tiers
from .state import Run
from .wire import LIVE_LOG_KEY, OUTSIDE_KEY, REPORT_KEYS

if TYPE_CHECKING:
    from .records import ModulePeaks


ISOLATED_KEY = "heavy/isolated"  # whether a session here ever had a test to isolate (first session: False)


class HeavySession:
    def __init__(self, config: pytest.Config, run: Run) -> None:
        self.config = config
        self.run = run
        # Whether a selected item may need a child: False when collection saw none (no plan is made).
        self.isolation_candidates = True

    def pytest_report_header(self) -> list[str]:
        hardware, tier = self.run.hardware.summary(), tiers.describe(self.config, self.run.settings)
        return [f"heavy: {hardware}", f"heavy tier: {tier}"]

    @pytest.hookimpl(trylast=True)  # after the fixture manager and every plugin's session start
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        run = self.run
        if not isolation_possible(self.config, run) or self.config.pluginmanager.has_plugin("dsession"):
            return  # xdist's controller runs no test: no template
        from .isolation import threads

        if xdist_worker(self.config):
            from .isolation import junit
            from .isolation import xdist_worker as worker

            peaks = functools.partial(recorded_peaks, self.config, run)
            if not worker.register(self.config, run, self.note, peaks):  # a --dist mode that splits modules
                return
            junit.announce(self.config)  # a worker's loop is xdist's: its children start from there

        shared_log_file(self.config)
        threads.record_thread_baseline()  # before any test module is imported: plugins' threads are known
        if run.settings.template:
            run.template_missing = nothing_isolated_here(self.config, run)
        if run.settings.template and not run.template_missing:
            from .isolation import junit
            from .isolation.launch import preload

            junit.announce(self.config)  # the template's copy of the options must carry it too
            preload.start_template(self.config, run)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Tiers, gating and whether any item may need a child, in one pass over the items' needs records."""
        run = self.run
        if run.settings.child:
            return
        slow, gated, self.isolation_candidates = sort_items(self.config, run, items)
        run.tier_deselected = tiers.deselect(self.config, items, slow)
        remember_isolation(self.config, self.isolation_candidates)
        if gated:
            run.gated = gating.GatedReports(gated)
            self.config.pluginmanager.register(run.gated, "heavy-gated")

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        """Take over the run loop when heavy modules are to be isolated; otherwise leave it to pytest."""
        config, run = self.config, self.run
        blocker = isolation_blocker(config)
        if blocker and not run.settings.child and run.settings.isolate != "never":
            config.get_terminal_writer().line(f"pytest-heavy: {blocker}", yellow=True)
        if xdist_worker(config):
            return None  # xdist's WorkerInteractor runs the loop; heavy modules: isolation/xdist_worker.py
        units = None
        collection_ok = not session.testsfailed or config.option.continue_on_collection_errors
        if isolation_possible(config, run) and collection_ok and self.isolation_candidates:
            from .isolation import plan

            units = plan.plan(session.items, run.settings, run.hardware)
        if units is None:
            if run.template is not None:
                run.template.close()
            return None
        from .isolation import junit, launch
        from .isolation.controller import Controller

        junit.announce(config)  # before the first child (a template forked at session start has it already)
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
        controller: its workers' reports are xdist's to rebuild. A report that carries none of
        these (``_report_type``: a subtest's) is left to pytest at the cost of a few lookups."""
        if "_report_type" not in data and not any(key in data for key in REPORT_KEYS):
            return None  # pytest's own (the common case: one test's plain report)
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

    def pytest_heavy_child_env(self, env: dict[str, str]) -> None:
        """Tell the child where tmp_path directories go (``child.share_basetemp``)."""
        from .isolation import child

        # Made now, once, by the parent (a given --basetemp emptied once, retention applied once); a
        # fork inherits it, and the others are told where it is.
        factory = getattr(self.config, "_tmp_path_factory", None)
        if factory is not None:
            env[child.BASETEMP_ENV] = str(factory.getbasetemp())

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
        if run.gated is None and not run.records and not run.in_xdist_workers:
            tiers.summary(terminalreporter, run.tier_deselected)  # all an idle session may have to say
            return
        from . import report

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
        if run.template is not None:  # a session that never reached its run loop (an interrupted collection)
            run.template.close()
        if run.settings.report_path and not run.settings.child:
            from . import report

            report.write_json(run.settings.report_path, run.records, json.loads(run.hardware.to_json()),
                              run.report_extra)


def shared_log_file(config: pytest.Config) -> None:
    """Children append to the parent's ``--log-file`` (or ini ``log_file``): they are handed its
    absolute path, and the parent's handler appends from now on (``child.append_to_log_file``)."""
    plugin = config.pluginmanager.get_plugin("logging-plugin")
    handler = getattr(plugin, "log_file_handler", None)
    path = getattr(handler, "baseFilename", None)
    if handler is None or not path or path == os.devnull:
        return
    from .isolation import child  # only here: a session without a log file never imports the child side

    config.option.log_file = path
    child.append_to_log_file(config, handler)


def nothing_isolated_here(config: pytest.Config, run: Run) -> str:
    """Why no template is forked for this session under ``heavy_start = auto``, or "".

    The template must be forked before collection, when whether a test will need a child is not known
    yet: a project whose sessions never had one (``ISOLATED_KEY`` in the pytest cache) is not charged
    for a process it never uses. Should one appear, its children start by fork (or spawn) this once.
    """
    cache = getattr(config, "cache", None)
    if run.settings.start != "auto" or cache is None or cache.get(ISOLATED_KEY, None) is not False:
        return ""
    return "no earlier session here had a test to isolate (the pytest cache); it is forked from the next one"


def remember_isolation(config: pytest.Config, candidates: bool) -> None:
    """Record in the pytest cache whether this project's sessions have ever had a test to isolate:
    False only from the first session, True for good once one had (``nothing_isolated_here``)."""
    cache = getattr(config, "cache", None)
    if cache is None:
        return
    seen = cache.get(ISOLATED_KEY, None)
    if (candidates and seen is not True) or (not candidates and seen is None):
        cache.set(ISOLATED_KEY, candidates)


def sort_items(config: pytest.Config, run: Run,
               items: list[pytest.Item]) -> tuple[list[pytest.Item], dict[str, str], bool]:
    """Each item's needs record read once (a bad mark is a usage error naming the test), for tiers,
    gating and the plan alike; an item with no mark of ours (``markers.NO_NEEDS``) costs one lookup.

    Returns the slow items to deselect (outside the selected tier), the reason gating skips each gated
    item with (by node id), and whether a kept, not gated item has an isolation or a routed GPU mark.
    """
    settings, hardware = run.settings, run.hardware
    deselect_slow = not tiers.slow_is_selected(config, settings)
    route_gpu = hardware.parent_trap_risk
    slow: list[pytest.Item] = []
    gated: dict[str, str] = {}
    candidates = False
    for item in items:
        needs = markers.needs_or_usage_error(item, settings)
        if needs is markers.NO_NEEDS:
            continue
        if deselect_slow and needs.slow:
            slow.append(item)
            continue
        reason = gating.verdict(needs, settings, hardware)
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
            gated[item.nodeid] = reason
        elif needs.isolate or (route_gpu and needs.gpu_marker):
            candidates = True
    return slow, gated, candidates


def isolation_blocker(config: pytest.Config) -> str | None:
    """Why this run must stay in one process whatever the settings, or None."""
    # Both options belong to pytest's debugging plugin, which ``-p no:debugging`` leaves out.
    if config.getoption("usepdb", False) or config.getoption("trace", False):
        return "--pdb/--trace given: heavy isolation is off for this run"
    return None


def isolation_possible(config: pytest.Config, run: Run) -> bool:
    return not (run.settings.child or run.settings.isolate == "never" or config.option.collectonly
                or isolation_blocker(config))


def xdist_worker(config: pytest.Config) -> bool:
    """A pytest-xdist worker: its run loop belongs to xdist's WorkerInteractor, which hands it
    items one at a time; taking the loop over would break the worker."""
    return hasattr(config, "workerinput")


def recorded_peaks(config: pytest.Config, run: Run) -> dict[str, ModulePeaks]:
    """What --heavy-workers auto packs by; a store it cannot read is a usage error naming the file."""
    if not run.settings.packing:
        return {}
    from .records import DurationsError, Store

    try:
        return Store(config, run.settings.durations_path).read_peaks()
    except DurationsError as exc:
        raise pytest.UsageError(f"--heavy-workers auto: {exc}") from None
