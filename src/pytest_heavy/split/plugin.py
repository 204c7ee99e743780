"""``--heavy-split i/N``: keep this subset's share of the selection, and record durations on every run.

Durations are recorded into the pytest cache on every run, not only split ones, so that the first
``--heavy-split`` on this machine is already balanced; the committed file (ini ``heavy_durations_path``)
is only read, and written only with ``--heavy-store-durations`` (pytest-split's convention), so that an
ordinary run never dirties a checkout. They come from the reports of ``pytest_runtest_logreport``:
isolated children's reports are re-emitted in the parent through that same hook, so one source covers
in-process items, isolated modules and examples. The terminal reporter already keeps every one of
them (its ``stats``), so they are read there once at the session's end; only without it
(``-p no:terminal``) does a hook of ours take each report (``Phases``).

The subsets of one split must all partition with the same durations, or a test lands in no subset or in
two. ``pytest-heavy split`` shares a snapshot file (``SNAPSHOT_ENV``) and ``--slurm`` a whole plan
(``split/slurm.py``); plain ``--heavy-split i/N`` runs made in turn by hand in one checkout share a round
snapshot in the cache (``ROUND_KEY``): the first subset of a round takes the store's durations, and the
round ends when a subset index comes back.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ..records import DurationsError, ModulePeaks, Store, as_durations, rounded
from ..state import Run

if TYPE_CHECKING:
    from ..report import HeavyRecord

EMPTY_MESSAGE = "this subset is empty"
ROUND_KEY = "heavy/split-round"  # {"n": N, "done": [subset indices], "durations": {node id: seconds}}


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
        self.phases: Phases | None = None  # reports taken one by one, without a terminal reporter
        self.selected = 0  # items before the split
        self.estimate = (0.0, 0.0)  # seconds: this subset, the whole selection
        self.emptied = False  # this subset is empty because of the split, not for want of tests

    @pytest.hookimpl(trylast=True)  # the terminal reporter registers at configure, after us
    def pytest_sessionstart(self) -> None:
        if self.config.pluginmanager.get_plugin("terminalreporter") is None:
            self.phases = Phases()
            self.config.pluginmanager.register(self.phases, "heavy-split-phases")

    # A wrapper, so that the split sees the selection after every plain hook (tiers, gating, -k, -m,
    # --deselect) whatever the registration order; tryfirst makes it the outermost, after --lf too.
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> Generator[None, None, None]:
        result = yield
        if self.split is not None and items:
            self._keep_subset(items, *self.split)
        return result

    def _round_durations(self, index: int, n: int) -> dict[str, float]:
        """The durations of this round of ``--heavy-split i/N`` runs made in turn in one checkout.

        Each run records what it measured, so reading the store afresh would give the next subset a
        different partition (tests run twice or never). A round starts with the store's durations and
        lasts until an index of it comes back (or N changes).
        """
        cache = self.store.cache
        if cache is None:
            return self.store.read()
        held = cache.get(ROUND_KEY, None)
        durations, done = None, []
        if isinstance(held, dict) and held.get("n") == n and isinstance(held.get("done"), list) \
                and index not in held["done"]:
            try:
                durations, done = as_durations(held.get("durations"), ROUND_KEY), held["done"]
            except DurationsError:
                pass  # a damaged entry starts a new round, as pytest re-records its own keys
        if durations is None:
            durations, done = self.store.read(), []
        cache.set(ROUND_KEY, {"n": n, "done": sorted([*done, index]), "durations": durations})
        return durations

    def _keep_subset(self, items: list[pytest.Item], index: int, n: int) -> None:
        # Imported only here: a session that does not split only records durations.
        from .durations import SNAPSHOT_ENV, partition, snapshot, unit_weights
        from .slurm import PLAN_ENV, PlanError, build, gpus_of, publish, read_plan, separate

        settings = self.run.settings
        snapshot_path = os.environ.get(SNAPSHOT_ENV)
        plan_path = Path(os.environ[PLAN_ENV]) if os.environ.get(PLAN_ENV) else None
        try:
            plan = read_plan(plan_path) if plan_path else None
            if plan is not None and plan.n != n:
                raise PlanError(f"{plan_path} is the plan of a split into {plan.n}, not {n}")
            durations = (snapshot(Path(snapshot_path), self.store) if snapshot_path
                         else self._round_durations(index, n))
        except (DurationsError, PlanError) as exc:
            raise pytest.UsageError(f"--heavy-split: {exc}") from None
        example_dirs = [self.config.rootpath / d for d in settings.examples_dirs]
        units = {item.nodeid: unit_of(item, settings.split_by, example_dirs) for item in items}
        marked_skip = {item.nodeid for item in items if item.get_closest_marker("skip")}
        publishing = plan is None and plan_path is not None
        # A plan's tasks run on other nodes: GPU tests gated here keep their recorded weight there.
        gpu_items = {item.nodeid for item in items if gpus_of(item, settings)} if publishing else set()
        weights = unit_weights(units, durations, marked_skip - gpu_items)
        if plan is None and plan_path is not None:
            # GPU and CPU units go to different tasks where that balances (CPU tasks then hold no GPU).
            buckets = separate(weights, {units[nodeid] for nodeid in gpu_items}, n)
            recorded = any(nodeid in durations for nodeid in units)
            plan = publish(plan_path, build(items, units, weights, buckets, settings, self.store.read_peaks(),
                                            recorded))
        if plan is None:
            mine = set(partition(weights, n)[index - 1])
        else:
            # Units the plan does not know (collected here, not where it was made) are split among
            # the subsets by their weights alone, the same way in every task that collects them.
            extra = {u: w for u, w in weights.items() if u not in plan.units}
            mine = {u for u in weights if u in plan.units and plan.units[u].subset == index}
            mine.update(partition(extra, n)[index - 1] if extra else ())
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
        phases = self.phases
        if phases is None:
            phases = Phases()
            reporter = self.config.pluginmanager.get_plugin("terminalreporter")
            for reports in getattr(reporter, "stats", {}).values():
                phases.take(reports)
        self.store.record(phases.durations(), module_peaks(self.run.records))
        if self.emptied and session.exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
            session.exitstatus = pytest.ExitCode.OK  # an empty share is not a broken run

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.split is not None and self.emptied:
            index, n = self.split
            terminalreporter.write_line(
                f"heavy split {index}/{n}: {EMPTY_MESSAGE} (all {self.selected} selected items are in other "
                f"subsets); exit status 0")


PHASES = ("setup", "call", "teardown")


class Phases:
    """Each test's duration per phase, from its reports; a skipped test's time says nothing of it."""

    def __init__(self) -> None:
        self.seconds: dict[str, dict[str, float]] = {}  # node id -> {setup/call/teardown: seconds}
        self.skipped: set[str] = set()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.take((report,))

    def take(self, reports: Iterable[Any]) -> None:
        """Take the test reports among ``reports`` (a terminal reporter's stats hold others too).

        The longest report of each phase is kept: a test re-run after a crashed child is counted
        once, and a test's call holds its subtests' calls, in whichever order the reports come.
        One loop, no call per report: a session's end reads thousands of them here.
        """
        seconds, skipped = self.seconds, self.skipped
        for report in reports:
            when = getattr(report, "when", None)
            if when not in PHASES:
                continue
            nodeid, duration = report.nodeid, report.duration
            by_phase = seconds.get(nodeid)
            if by_phase is None:
                by_phase = seconds[nodeid] = {}
            if duration >= by_phase.get(when, 0.0):
                by_phase[when] = duration
            if report.outcome == "skipped" and not hasattr(report, "wasxfail"):
                skipped.add(nodeid)

    def durations(self) -> dict[str, float]:
        return {nodeid: rounded(sum(by_phase.values()))
                for nodeid, by_phase in self.seconds.items() if nodeid not in self.skipped}


def register(config: pytest.Config, run: Run) -> None:
    """In the parent only: children run exactly the node ids they are given and record nothing."""
    if not run.settings.child:
        config.pluginmanager.register(SplitPlugin(config, run), "heavy-split")
