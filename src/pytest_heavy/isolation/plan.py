"""Which items run where: in the parent, or in a child process per heavy module.

A module is heavy when a selected, not-skipped test in it carries a ``heavy_isolate_markers``
marker (examples excepted: each already runs in its own process). In EXCLUSIVE_PROCESS mode without
MPS, every test with a GPU marker is routed into a child too (one GPU child at a time), since only one
process per GPU may hold a CUDA context.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from ..hardware import Hardware
from ..markers import Needs, closest, module_of, needs
from ..settings import Settings
from .schedule.base import Job


@dataclass
class Unit:
    """A run of items executed together: in the parent, or in one child (``module`` set)."""

    items: list[pytest.Item] = field(default_factory=list)
    module: str | None = None  # the module's node id part ("test/test_x.py") when isolated
    gpu: bool = False  # holds GPU-marked tests routed because of EXCLUSIVE_PROCESS
    gpus: int = 0  # GPUs its tests use: requires_gpu(count=N), 1 for another GPU or isolation marker
    heavy_ram: bool = False  # holds requires_heavy_ram tests: counts against the RAM budget when packing
    ram_gib: float = 0.0  # the largest RAM amount its tests' marks ask for
    vram_gib: float = 0.0  # the largest VRAM amount its tests' marks ask for

    def add(self, item: pytest.Item, item_needs: Needs | None) -> None:
        """Take ``item`` into the unit, and what it needs (None: it is skipped) into the unit's demand."""
        self.items.append(item)
        if item_needs is None:
            return
        if item_needs.gpus or item_needs.gpu_isolation:
            self.gpus = max(self.gpus, item_needs.gpus or 1)
        if item_needs.ram_gib is not None:
            self.heavy_ram = True
            self.ram_gib = max(self.ram_gib, item_needs.ram_gib)
        self.vram_gib = max(self.vram_gib, item_needs.vram_gib or 0.0)

    @property
    def on_gpu(self) -> bool:
        """Whether its child uses a GPU: routed GPU tests, or tests that need one."""
        return self.gpu or self.gpus > 0

    def job(self) -> Job:
        """What the scheduler is handed for this unit's child."""
        assert self.module is not None, "only a module unit runs in a child"
        return Job(self.module, gpus=self.gpus, heavy_ram=self.heavy_ram, routed=self.gpu,
                   ram_mib=self.ram_gib * 1024, vram_mib=self.vram_gib * 1024)


def plan(items: list[pytest.Item], settings: Settings, hw: Hardware) -> list[Unit] | None:
    """Units in collection order, or None when everything runs in the parent as usual.

    Each item's needs record (``markers.needs``, read and checked at collection) is looked up once here.
    """
    if settings.isolate == "never":
        return None
    route_gpu = hw.parent_trap_risk
    heavy: dict[str, bool] = {}  # module -> holds routed GPU tests
    read: list[Needs | None] = []  # each item's needs; None: skipped
    for item in items:
        if "skip" in closest(item):  # unconditionally skipped (gating adds such marks): not worth a child
            read.append(None)
            continue
        found = needs(item, settings)
        read.append(found)
        # An example already runs in a process of its own: isolation markers add nothing but a second one.
        own_process = getattr(item, "runs_in_own_process", False)
        if not own_process and found.isolate:
            heavy.setdefault(module_of(item), False)
        if route_gpu and found.gpu_marker:
            heavy[module_of(item)] = True
    if not heavy or (settings.isolate == "auto" and len(heavy) < 2 and not any(heavy.values())):
        return None
    units: list[Unit] = []
    by_module: dict[str, Unit] = {}
    for item, item_needs in zip(items, read, strict=True):
        module = module_of(item)
        if module in heavy and item_needs is not None:
            unit = by_module.get(module)
            if unit is None:
                unit = by_module[module] = Unit(module=module, gpu=heavy[module])
                units.append(unit)
            unit.add(item, item_needs)
            continue
        if not units or units[-1].module is not None:
            units.append(Unit())
        units[-1].add(item, item_needs)
    return units
