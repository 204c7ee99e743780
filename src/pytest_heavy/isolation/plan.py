"""Which items run where: in the parent, or in a child process per heavy module.

A module is heavy when a selected, not-skipped test in it carries a ``heavy_isolate_markers``
marker (examples excepted: each already runs in its own process). In EXCLUSIVE_PROCESS mode without
MPS, every test with a GPU marker is routed into a child too (one GPU child at a time), since only one
process per GPU may hold a CUDA context.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ..gating import gpu_count, gpu_marker
from ..hardware import Hardware
from ..markers import closest
from ..settings import Settings

# What plan() reads of a test that is not skipped, worked out once: its marks, and whether one implies a GPU.
_Facts = tuple[dict[str, pytest.Mark], bool]


@dataclass
class Unit:
    """A run of items executed together: in the parent, or in one child (``module`` set)."""

    items: list[pytest.Item] = field(default_factory=list)
    module: str | None = None  # the module's node id part ("test/test_x.py") when isolated
    gpu: bool = False  # holds GPU-marked tests routed because of EXCLUSIVE_PROCESS
    gpus: int = 0  # GPUs its tests use: requires_gpu(count=N), 1 for another GPU or isolation marker
    heavy_ram: bool = False  # holds requires_heavy_ram tests: counts against the RAM budget when packing

    def add(self, item: pytest.Item, facts: _Facts | None) -> None:
        """Take ``item`` into the unit, and what it needs (``facts``; None: it is skipped) into the
        unit's demand."""
        self.items.append(item)
        if facts is None:
            return
        marks, gpu = facts
        if gpu or "requires_gpu_isolation" in marks:
            mark = marks.get("requires_gpu")
            self.gpus = max(self.gpus, gpu_count(mark) if mark else 1)
        self.heavy_ram = self.heavy_ram or "requires_heavy_ram" in marks


def module_of(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def isolation_blocker(config: pytest.Config) -> str | None:
    """Why this run must stay in one process whatever the settings, or None."""
    # Both options belong to pytest's debugging plugin, which ``-p no:debugging`` leaves out.
    if config.getoption("usepdb", False) or config.getoption("trace", False):
        return "--pdb/--trace given: heavy isolation is off for this run"
    return None


def plan(items: list[pytest.Item], settings: Settings, hw: Hardware) -> list[Unit] | None:
    """Units in collection order, or None when everything runs in the parent as usual."""
    if settings.isolate == "never":
        return None
    route_gpu = hw.parent_trap_risk
    heavy: dict[str, bool] = {}  # module -> holds routed GPU tests
    facts: dict[pytest.Item, _Facts] = {}  # tests not skipped (unconditionally: gating adds such marks)
    for item in items:
        marks = closest(item)
        if "skip" in marks:
            continue
        facts[item] = marks, gpu_marker(marks, settings) is not None
        # An example already runs in a process of its own: isolation markers add nothing but a second one.
        own_process = getattr(item, "runs_in_own_process", False)
        if not own_process and any(m in marks for m in settings.isolate_markers):
            heavy.setdefault(module_of(item), False)
        if route_gpu and facts[item][1]:
            heavy[module_of(item)] = True
    if not heavy or (settings.isolate == "auto" and len(heavy) < 2 and not any(heavy.values())):
        return None
    units: list[Unit] = []
    by_module: dict[str, Unit] = {}
    for item in items:
        module = module_of(item)
        if module in heavy and item in facts:
            unit = by_module.get(module)
            if unit is None:
                unit = by_module[module] = Unit(module=module, gpu=heavy[module])
                units.append(unit)
            unit.add(item, facts[item])
            continue
        if not units or units[-1].module is not None:
            units.append(Unit())
        units[-1].add(item, facts.get(item))
    return units
