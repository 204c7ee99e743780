"""``--heavy-find-leaks``: run everything in one process on purpose, and name, per module, the memory
still held after its last test's teardown and what holds it.

After a module's last teardown (its module fixtures are finalized by then), ``gc.collect()``,
``torch.cuda.empty_cache()`` where CUDA is already up and ``malloc_trim`` give back what can be given
back; what the process tree still holds above the module's starting point is what the module keeps.
To say who keeps it, ``leakgraph`` climbs from the large objects alive now and not before the module
to the first module global or pytest fixture that holds them. Every walk over the heap is bounded in
time (``SEARCH_S``): on a large heap the answer may be partial, and the row says so.
"""

from __future__ import annotations

import ctypes
import os
import time
from collections.abc import Generator, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest

from .. import cleanup, markers
from ..examples.item import ExampleItem
from ..isolation.plan import module_of
from ..state import Run
from .leakgraph import Holder, holders, large_objects, mib_text
from .sampler import Reading, read_tree

MIN_KEPT_MIB = 16.0  # a module keeping less is reported as keeping nothing
SEARCH_S = 5.0  # bound on one module's search for holders (snapshot, enumeration, climbing)


@dataclass
class LeakRow:
    """One module's figures: a row under ``leaks`` in the JSON report and a line in the summary."""

    module: str
    heavy: bool
    kept_rss_mib: float
    kept_gpu_mib: float | None
    holders: list[Holder] = field(default_factory=list)
    complete: bool = True  # the holder search finished within its time bound

    def kept(self) -> bool:
        return self.kept_rss_mib >= MIN_KEPT_MIB or (self.kept_gpu_mib or 0.0) >= MIN_KEPT_MIB

    def text(self) -> str:
        if not self.kept():
            return f"{self.module} keeps nothing after teardown (less than {MIN_KEPT_MIB:.0f} MiB)"
        amounts = []
        if self.kept_rss_mib >= MIN_KEPT_MIB:
            amounts.append(mib_text(self.kept_rss_mib * (1 << 20)) + " of RAM")
        if (self.kept_gpu_mib or 0.0) >= MIN_KEPT_MIB:
            amounts.append(mib_text((self.kept_gpu_mib or 0.0) * (1 << 20)) + " of GPU memory")
        holders = "; ".join(h.text() for h in self.holders) or (
            "no large object found holding it (many small objects, or memory outside Python objects)")
        partial = "" if self.complete else f" (search stopped after {SEARCH_S:g}s: holders may be missing)"
        return f"{self.module} keeps {' and '.join(amounts)} after teardown: {holders}{partial}"


def trim_malloc() -> None:
    """Give freed heap pages back to the system, so RSS shows only what is still referenced.

    ``CDLL(None)`` is the process's own symbol table, libc included; only glibc has ``malloc_trim``.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def settle() -> None:
    cleanup.collect()
    trim_malloc()


class LeakFinder:
    """Per module, in the one pytest process: a starting point, then what is kept after the module."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.rows: list[dict[str, Any]] = []  # JSON rows, in module order
        self.lines: list[str] = []
        self._module: str | None = None
        self._start = Reading()
        self._before: set[int] = set()
        self._before_complete = True
        self._heavy = False
        self._item: pytest.Item | None = None

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item,
                                nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
        if isinstance(item, ExampleItem):  # a process of its own: it cannot keep anything in ours
            return (yield)
        module = module_of(item)
        if module != self._module:
            settle()
            self._module, self._heavy = module, False
            self._start = read_tree_here(self.run)
            before, self._before_complete = large_objects(time.monotonic() + SEARCH_S)
            self._before = set(before)
            del before
        self._heavy |= bool(markers.names(item) & set(self.run.settings.isolate_markers))
        self._item = item
        try:
            return (yield)
        finally:
            self._item = None

    def module_done(self, module: str) -> None:
        """The module's fixtures are finalized; its last test's ``funcargs`` still point at their values
        (pytest drops them only after the whole teardown, session fixtures included): dropped here so
        a released fixture value does not count as kept."""
        if self._item is not None and getattr(self._item, "funcargs", None):
            self._item.funcargs = {}  # type: ignore[attr-defined]
        self.finish_module(module)

    def finish_module(self, module: str) -> None:
        settle()
        end = read_tree_here(self.run)
        start_gpu, end_gpu = self._start.gpu_total(), end.gpu_total()
        row = LeakRow(module, self._heavy, round(end.rss_mib - self._start.rss_mib, 1),
                      None if end_gpu is None else round(end_gpu - (start_gpu or 0.0), 1))
        if row.kept():
            row.holders, row.complete = holders(self._before, time.monotonic() + SEARCH_S)
            row.complete = row.complete and self._before_complete  # else old objects may look new
        self._module = None
        self._before = set()
        if row.heavy or row.kept():
            self.rows.append(asdict(row))
            self.lines.append(row.text())

    def pytest_report_header(self) -> str:
        return "heavy: --heavy-find-leaks: every module runs in this process, on purpose"

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.write_sep("-", "memory kept after teardown (pytest-heavy --heavy-find-leaks)")
        for line in self.lines or ["no module keeps memory after its teardown"]:
            terminalreporter.write_line(line)


FINDER = pytest.StashKey[LeakFinder]()


@pytest.fixture(scope="module", autouse=True)
def _heavy_leak_probe(request: pytest.FixtureRequest) -> Iterator[None]:
    """Where a module ends: torn down right after the module's own fixtures (autouse, so set up first
    and finalized last of its scope) and before any session fixture, so the last module's figure is
    not lowered by what the session's teardown gives back. This module is registered as a plugin
    (only with --heavy-find-leaks) for this fixture alone."""
    yield
    request.config.stash[FINDER].module_done(module_of(request.node))


def read_tree_here(run: Run) -> Reading:
    return read_tree(os.getpid(), run.gpu())
