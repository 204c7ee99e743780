"""pytest-xdist's controller when heavy modules are isolated in its workers (``xdist_worker.py``).

A heavy module's tests must reach one worker whole: that worker runs the module in one child at its
first test and replays each test's events when its loop reaches the test. The controller collects
nothing, so each worker publishes, at the end of its collection, which node ids belong to a heavy
module (a file in a directory the controller handed it in ``workerinput``), and the scheduler reads
them in ``schedule()``, which xdist calls only once every worker's collection arrived.

Per ``--dist`` mode: ``load`` and ``loadscope`` get a scheduler that keeps heavy modules whole and
spreads the other tests as the mode would (one test at a time, or by class/module); ``loadfile`` and
``each`` keep modules whole already. ``worksteal`` moves tests between workers and ``loadgroup``
groups by ``xdist_group``, so either may split a module: there heavy modules run unisolated in the
workers, as before, and the run ends with one line naming the mode.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadScopeScheduling

from ..state import Run
from .xdist_worker import INPUT_KEY, RECORDS_KEY, from_wire

ISOLATING = ("load", "loadscope", "loadfile", "each")  # a heavy module reaches one worker whole
PUBLISHED = pytest.StashKey[str]()  # the directory workers publish their heavy node ids in


def isolates(config: pytest.Config, possible: bool) -> bool:
    """``possible``: the session may isolate at all (``session.isolation_possible``)."""
    return possible and str(config.getvalue("dist")) in ISOLATING


def configure_node(config: pytest.Config, node: Any, possible: bool) -> None:
    """Tell a starting worker whether it isolates, and where it publishes its heavy node ids."""
    if PUBLISHED not in config.stash:
        config.stash[PUBLISHED] = tempfile.mkdtemp(prefix="pytest-heavy-xdist-")
    node.workerinput[INPUT_KEY] = {"dir": config.stash[PUBLISHED], "isolate": isolates(config, possible),
                                   "mode": str(config.getvalue("dist"))}


def make_scheduler(config: pytest.Config, log: Any, possible: bool) -> HeavyScopeScheduling | None:
    """``load`` and ``loadscope``: a scheduler that keeps heavy modules whole; None: xdist's own."""
    dist = config.getvalue("dist")
    if dist not in ("load", "loadscope") or not isolates(config, possible):
        return None
    return HeavyScopeScheduling(config, log, Path(config.stash[PUBLISHED]), per_test=dist == "load")


class HeavyScopeScheduling(LoadScopeScheduling):  # type: ignore[misc]
    """xdist's scope scheduler, where a heavy module is one scope and every other test is its own
    scope (``--dist load``) or its class's/module's (``--dist loadscope``)."""

    def __init__(self, config: pytest.Config, log: Any, published: Path, per_test: bool) -> None:
        super().__init__(config, log)
        self.published = published
        self.per_test = per_test
        self.heavy: dict[str, str] = {}  # node id -> its heavy module

    def schedule(self) -> None:
        if self.collection is None:  # the first call: every worker has collected and published
            for path in sorted(self.published.glob("*.json")):
                self.heavy.update(json.loads(path.read_text()))
        super().schedule()

    def remove_node(self, node: Any) -> str | None:
        """A worker is gone: its unfinished work goes back to the queue, as in xdist's scope scheduler,
        less the test it crashed in, which xdist reports as failed (xdist's own re-queues that test
        too, so that a crashing test takes down one worker after another until none is left)."""
        workload = self.assigned_work.pop(node)
        pending = [nodeid for unit in workload.values() for nodeid, done in unit.items() if not done]
        if not pending:
            return None
        crashitem = pending[0]
        for unit in workload.values():
            if crashitem in unit:
                unit[crashitem] = True
        self.workqueue.update({scope: unit for scope, unit in workload.items() if not all(unit.values())})
        for other in self.assigned_work:
            self._reschedule(other)
        return crashitem

    def _split_scope(self, nodeid: str) -> str:
        module = self.heavy.get(nodeid)
        if module is not None:
            return module
        return nodeid if self.per_test else str(super()._split_scope(nodeid))


def node_down(run: Run, node: Any) -> None:
    """A worker ended: its heavy-table rows join the controller's table; the modules it ran
    unisolated (a mode that may split a module) are named at the end."""
    output = getattr(node, "workeroutput", None) or {}
    run.records.extend(from_wire(row) for row in output.get(RECORDS_KEY, ()))
    run.in_xdist_workers.update(output.get("heavy_modules", ()))


def cleanup(config: pytest.Config) -> None:
    published = config.stash.get(PUBLISHED, None)
    if published:
        shutil.rmtree(published, ignore_errors=True)
