"""pytest hooks, each a few lines handing work to the module that owns the concern.

The options and ini keys are always declared (so a project's configuration parses and ``--help`` lists
them), but nothing else happens unless the project or the run opted in (``settings.enabled``): without
``Run`` in the stash every hook returns at once, and no concern registers its plugin object.
"""

from __future__ import annotations

import json
import os

import pytest

from . import cleanup, gating, hardware, hooks, markers, report, tiers
from .examples import plugin as examples
from .gpu import guard, mps
from .isolation import plan
from .memattr import plugin as memattr
from .settings import ASSUME_ENV, ENABLE_ENV, Settings, add_options, enabled, load
from .split import plugin as split
from .split.durations import DurationsError, ModulePeaks, Store
from .state import RUN, Run

DISABLED = pytest.StashKey[str]()  # what kept pytest-heavy off, for the one header line

# Modules exposing ``register(config, run)``; each adds its own hooks for the session.
CONCERNS: tuple = (split, examples, guard, cleanup, memattr)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hooks)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    on, why = enabled(config)
    if not on:
        config.stash[DISABLED] = why
        return
    settings: Settings = load(config)
    markers.register(config, settings.gpu_markers + settings.isolate_markers)
    hw = hardware.from_env() if settings.child else None
    if hw is None:
        mps.adopt(os.environ)  # before the probe, which then sees the daemon, and before any CUDA client
        try:
            hw = hardware.probe(settings.assume or None)
        except hardware.AssumeError as exc:
            source = "--heavy-assume" if config.option.heavy_assume else ASSUME_ENV
            raise pytest.UsageError(f"{source} {settings.assume!r}: {exc}") from None
    run = config.stash[RUN] = Run(settings=settings, hardware=hw)
    # Concerns that keep per-session state register a plugin object of their own here.
    for concern in CONCERNS:
        concern.register(config, run)


def pytest_report_header(config: pytest.Config) -> list[str]:
    run = config.stash.get(RUN, None)
    if run is None:
        return [f"heavy: off ({config.stash[DISABLED]}); enable with heavy_enabled = true in the pytest "
                f"configuration, a --heavy-* option or {ENABLE_ENV}=1"]
    return [f"heavy: {run.hardware.summary()}", f"heavy tier: {tiers.describe(config, run.settings)}"]


def pytest_sessionstart(session: pytest.Session) -> None:
    run = session.config.stash.get(RUN, None)
    if run is None:
        return
    xdist = xdist_worker(session.config) or session.config.pluginmanager.has_plugin("dsession")
    if not isolation_possible(session.config, run) or xdist:  # with -n no child starts: no server either
        return
    from .isolation import launch  # imported only by sessions that may isolate: the idle cost stays low

    launch.record_thread_baseline()  # before any test module is imported: plugins' threads are known
    if launch.wants_forkserver(run.settings):
        from . import supervise
        from .isolation.launch.forkserver import ForkserverLauncher

        env = supervise.child_environment(run.settings, run.hardware, isolated=True)
        run.forkserver = ForkserverLauncher(session.config, session.config.option.capture != "no",
                                            run.settings.preload, env)


def isolation_possible(config: pytest.Config, run: Run) -> bool:
    return not (run.settings.child or run.settings.isolate == "never" or config.option.collectonly
                or plan.isolation_blocker(config))


def xdist_worker(config: pytest.Config) -> bool:
    """A pytest-xdist worker: its run loop belongs to xdist's WorkerInteractor, which hands it
    items one at a time; taking the loop over would break the worker."""
    return hasattr(config, "workerinput")


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    """Take over the run loop when heavy modules are to be isolated; otherwise leave it to pytest."""
    config = session.config
    run = config.stash.get(RUN, None)
    if run is None:
        return None
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
        if run.forkserver is not None:
            run.forkserver.close()
        return None
    from .isolation import launch
    from .isolation.controller import Controller

    try:
        peaks = recorded_peaks(config, run)
    except pytest.UsageError:
        if run.forkserver is not None:
            run.forkserver.close()
        raise
    method = launch.resolve(run.settings, run.forkserver)
    launchers = launch.Launchers(session, method, run.forkserver, note=lambda text: note(config, text))
    Controller(session, run, launchers, peaks).run_units(units)
    return True


def recorded_peaks(config: pytest.Config, run: Run) -> dict[str, ModulePeaks]:
    """What --heavy-workers auto packs by; a store it cannot read is a usage error naming the file."""
    if not run.settings.packing:
        return {}
    try:
        return Store(config, run.settings.durations_path).read_peaks()
    except DurationsError as exc:
        raise pytest.UsageError(f"--heavy-workers auto: {exc}") from None


def note(config: pytest.Config, text: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"pytest-heavy: {text}", yellow=True)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run = config.stash.get(RUN, None)
    if run is None or run.settings.child:
        return
    tiers.deselect_slow(config, run.settings, items)
    for item in items:
        marks = list(item.iter_markers())
        try:
            reason = gating.verdict(marks, run.settings, run.hardware)
        except ValueError as exc:
            raise pytest.UsageError(f"{item.nodeid}: {exc}") from None
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
            run.gated.setdefault(gating.reason_group(reason), []).append(item.nodeid)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """pytest-xdist's controller: a worker ended; note the heavy modules it ran unisolated."""
    output = getattr(node, "workeroutput", None) or {}
    config: pytest.Config = node.config  # type: ignore[attr-defined]
    run = config.stash.get(RUN, None)
    if run is not None:
        run.in_xdist_workers.update(output.get("heavy_modules", ()))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    run = terminalreporter.config.stash.get(RUN, None)
    if run is None:
        return
    report.gated_summary(terminalreporter, run.gated)
    report.heavy_table(terminalreporter, run.records, run.schedule)
    heavy_workers = run.settings.workers > 1 or run.settings.packing
    report.xdist_line(terminalreporter, run.in_xdist_workers, heavy_workers)


def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash.get(RUN, None)
    if run is not None and run.settings.report_path and not run.settings.child:
        report.write_json(run.settings.report_path, run.records, json.loads(run.hardware.to_json()),
                          run.report_extra)

