"""pytest hooks, each a few lines handing work to the module that owns the concern."""

from __future__ import annotations

import json
from collections.abc import Generator

import pytest

from . import cleanup, gating, hardware, markers, report, tiers
from .settings import Settings, add_options, load
from .state import RUN, Run

# Modules exposing ``register(config, run)``; each adds its own hooks for the session.
CONCERNS: tuple = ()


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    settings: Settings = load(config)
    markers.register(config, settings.gpu_markers + settings.isolate_markers)
    hw = hardware.from_env() if settings.child else None
    if hw is None:
        try:
            hw = hardware.probe(settings.assume or None)
        except hardware.AssumeError as exc:
            source = "--heavy-assume" if config.option.heavy_assume else hardware.ASSUME_ENV
            raise pytest.UsageError(f"{source} {settings.assume!r}: {exc}") from None
    run = config.stash[RUN] = Run(settings=settings, hardware=hw)
    # Concerns that keep per-session state register a plugin object of their own here.
    for concern in CONCERNS:
        concern.register(config, run)


def pytest_report_header(config: pytest.Config) -> list[str]:
    run = config.stash[RUN]
    return [f"heavy: {run.hardware.summary()}", f"heavy tier: {tiers.describe(config, run.settings)}"]


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    run = config.stash[RUN]
    if run.settings.child:
        return
    tiers.deselect_slow(config, run.settings, items)
    for item in items:
        marks = list(item.iter_markers())
        try:
            reason = gating.skip_reason(marks, run.settings, run.hardware)
        except ValueError as exc:
            raise pytest.UsageError(f"{item.nodeid}: {exc}") from None
        if reason is None and run.settings.cicd and item.get_closest_marker("qualitative"):
            reason = tiers.CICD_QUALITATIVE_REASON
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
            run.gated.setdefault(gating.reason_group(reason), []).append(item.nodeid)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    try:
        return (yield)
    finally:
        if item.config.stash[RUN].settings.cleanup:
            cleanup.collect()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    run = terminalreporter.config.stash[RUN]
    report.gated_summary(terminalreporter, run.gated)
    report.heavy_table(terminalreporter, run.records)


def pytest_sessionfinish(session: pytest.Session) -> None:
    run = session.config.stash[RUN]
    if run.settings.report_path and not run.settings.child:
        report.write_json(run.settings.report_path, run.records, json.loads(run.hardware.to_json()))

