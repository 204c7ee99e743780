"""``--heavy-split i/N``: keep this subset's share of the selection, and record durations on every run.

Durations are recorded into the pytest cache on every run, not only split ones, so that the first
``--heavy-split`` on this machine is already balanced; the committed file (ini ``heavy_durations_path``)
is only read, and written only with ``--heavy-store-durations`` (pytest-split's convention), so that an
ordinary run never dirties a checkout. They come from ``pytest_runtest_logreport``: isolated children's
reports are re-emitted in the parent through that same hook, so one source covers in-process items,
isolated modules and examples.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable
from pathlib import Path

import pytest

from ..records import DurationsError, ModulePeaks, Store, rounded
from ..report import HeavyRecord
from ..state import Run
from .durations import SNAPSHOT_ENV, partition, snapshot, unit_weights

EMPTY_MESSAGE = "this subset is empty"


def unit_of(item: pytest.Item, by: str, example_dirs: Iterable[Path]) -> str:
    """The node id, or with ``by == "module"`` its module, or an example's whole directory."""
    if by == "item":
        return item.nodeid
    path = item.nodeid.split("::", 1)[0]
    if any(item.path.is_relative_to(d) for d in example_dirs):
        return path.rpartition("/")[0]
    return path


def module_peaks(records: list[HeavyRecord]) -> dict[str, ModulePeaks]:
    """The peaks of every isolated module that ran a test (a module whose tests were all skipped here
    says nothing of what it needs where it runs)."""
    peaks = {}
    for r in records:
        if r.kind != "module" or not any(k != "skipped" for k in r.outcomes):
            continue
        per_gpu = r.peak_gpu_per_device_mib
        gpu = None if per_gpu is None else tuple(float(round(v)) for v in per_gpu)
        peaks[r.unit] = ModulePeaks(rounded(r.wall_s), float(round(r.peak_rss_mib)), gpu)
    return peaks


class SplitPlugin:
    def __init__(self, config: pytest.Config, run: Run) -> None:
        self.config = config
        self.run = run
        self.split = run.settings.split
        self.store = Store(config, run.settings.durations_path, run.settings.store_durations)
        self.phases: dict[str, dict[str, float]] = {}  # node id -> {setup/call/teardown: seconds}
        self.skipped: set[str] = set()
        self.selected = 0  # items before the split
        self.estimate = (0.0, 0.0)  # seconds: this subset, the whole selection
        self.emptied = False  # this subset is empty because of the split, not for want of tests

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        # Keyed by phase, so a test re-run after a crashed child is counted once.
        self.phases.setdefault(report.nodeid, {})[report.when] = report.duration
        if report.skipped and not hasattr(report, "wasxfail"):
            self.skipped.add(report.nodeid)  # a skip's time says nothing of the test's

    # A wrapper, so that the split sees the selection after every plain hook (tiers, gating, -k, -m,
    # --deselect) whatever the registration order; tryfirst makes it the outermost, after --lf too.
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> Generator[None, None, None]:
        result = yield
        if self.split is not None and items:
            self._keep_subset(items, *self.split)
        return result

    def _keep_subset(self, items: list[pytest.Item], index: int, n: int) -> None:
        settings = self.run.settings
        snapshot_path = os.environ.get(SNAPSHOT_ENV)
        try:
            durations = snapshot(Path(snapshot_path), self.store) if snapshot_path else self.store.read()
        except DurationsError as exc:
            raise pytest.UsageError(f"--heavy-split: {exc}") from None
        example_dirs = [self.config.rootpath / d for d in settings.examples_dirs]
        units = {item.nodeid: unit_of(item, settings.split_by, example_dirs) for item in items}
        marked_skip = {item.nodeid for item in items if item.get_closest_marker("skip")}
        weights = unit_weights(units, durations, marked_skip)
        mine = set(partition(weights, n)[index - 1])
        keep = [item for item in items if units[item.nodeid] in mine]
        drop = [item for item in items if units[item.nodeid] not in mine]
        self.selected = len(items)
        self.estimate = (sum(weights[u] for u in mine), sum(weights.values()))
        self.emptied = not keep
        if drop:
            self.config.hook.pytest_deselected(items=drop)
            items[:] = keep

    def pytest_report_collectionfinish(self, items: list[pytest.Item]) -> str | None:
        if self.split is None or not self.selected:
            return None
        index, n = self.split
        mine, total = self.estimate
        return (f"heavy split {index}/{n} by {self.run.settings.split_by}: {len(items)} of {self.selected} "
                f"items, about {mine:.2f}s of {total:.2f}s by recorded durations")

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.store.record({
            nodeid: rounded(sum(phases.values()))
            for nodeid, phases in self.phases.items() if nodeid not in self.skipped
        }, module_peaks(self.run.records))
        if self.emptied and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            session.exitstatus = pytest.ExitCode.OK  # an empty share is not a broken run

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.split is not None and self.emptied:
            index, n = self.split
            terminalreporter.write_line(
                f"heavy split {index}/{n}: {EMPTY_MESSAGE} (all {self.selected} selected items are in other "
                f"subsets); exit status 0")


def register(config: pytest.Config, run: Run) -> None:
    """In the parent only: children run exactly the node ids they are given and record nothing."""
    if not run.settings.child:
        config.pluginmanager.register(SplitPlugin(config, run), "heavy-split")
