"""The hooks of a session that opted in, registered as one plugin object by ``plugin.pytest_configure``.

A session that did not opt in never registers this object, so it pays for none of these hooks (nor
for importing what they use); only ``plugin.py``'s option declarations and one header line remain.
"""

from __future__ import annotations

import json

import pytest

from . import gating, markers, report, tiers
from .isolation import plan
from .split.durations import DurationsError, ModulePeaks, Store
from .state import Run


class HeavySession:
    def __init__(self, config: pytest.Config, run: Run) -> None:
        self.config = config
        self.run = run

    def pytest_report_header(self) -> list[str]:
        hardware, tier = self.run.hardware.summary(), tiers.describe(self.config, self.run.settings)
        return [f"heavy: {hardware}", f"heavy tier: {tier}"]

    @pytest.hookimpl(trylast=True)  # after the fixture manager and every plugin's session start
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        run = self.run
        xdist = xdist_worker(self.config) or self.config.pluginmanager.has_plugin("dsession")
        if not isolation_possible(self.config, run) or xdist:  # with -n no child starts: no template either
            return
        from .isolation import threads

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
        tiers.deselect_slow(self.config, run.settings, items)
        for item in items:
            try:
                reason = gating.verdict(markers.closest(item), run.settings, run.hardware)
            except ValueError as exc:
                raise pytest.UsageError(f"{item.nodeid}: {exc}") from None
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=reason))
                run.gated.setdefault(gating.reason_group(reason), []).append(item.nodeid)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        """Take over the run loop when heavy modules are to be isolated; otherwise leave it to pytest."""
        config, run = self.config, self.run
        blocker = plan.isolation_blocker(config)
        if blocker and not run.settings.child and run.settings.isolate != "never":
            config.get_terminal_writer().line(f"pytest-heavy: {blocker}", yellow=True)
        units = None
        collection_ok = not session.testsfailed or config.option.continue_on_collection_errors
        if isolation_possible(config, run) and collection_ok:
            units = plan.plan(session.items, run.settings, run.hardware)
        if units is not None and xdist_worker(config):  # run in this worker, and the controller says so
            config.workeroutput["heavy_modules"] = sorted({u.module for u in units if u.module})  # type: ignore[attr-defined]
            units = None
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

    def note(self, text: str) -> None:
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"pytest-heavy: {text}", yellow=True)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: object, error: object) -> None:
        """pytest-xdist's controller: a worker ended; note the heavy modules it ran unisolated."""
        output = getattr(node, "workeroutput", None) or {}
        self.run.in_xdist_workers.update(output.get("heavy_modules", ()))

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        run = self.run
        report.gated_summary(terminalreporter, run.gated)
        report.heavy_table(terminalreporter, run.records, run.schedule)
        heavy_workers = run.settings.workers > 1 or run.settings.packing
        report.xdist_line(terminalreporter, run.in_xdist_workers, heavy_workers)

    def pytest_sessionfinish(self) -> None:
        run = self.run
        if run.template is not None:  # a session that never reached its run loop (an interrupted collection)
            run.template.close()
        if run.settings.report_path and not run.settings.child:
            report.write_json(run.settings.report_path, run.records, json.loads(run.hardware.to_json()),
                              run.report_extra)


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
