"""The queue of heavy units ready to start: the scheduler says which starts now and where, and the
unit is placed there (its GPUs, and the running units it shares them with)."""

from __future__ import annotations

import time

from .. import report
from ..hardware import Hardware
from .schedule import Scheduler
from .units import UnitRun


class Ready:
    def __init__(self, scheduler: Scheduler, hw: Hardware) -> None:
        self.scheduler = scheduler
        self.hw = hw
        self.units: list[UnitRun] = []  # in the order the loop released them; OOM re-runs go first
        self.t_first: float | None = None  # when the first child started

    def add(self, *units: UnitRun) -> None:
        """``units`` are ready to start, after those already waiting."""
        self.units += units

    def pop(self, running: list[UnitRun]) -> UnitRun | None:
        """The unit the scheduler places now, taken off the queue and placed beside ``running``, or None."""
        picked = self.scheduler.pick([ur.job for ur in self.units]) if self.units else None
        if picked is None:
            return None
        job, placement = picked
        ur = next(ur for ur in self.units if ur.job is job)
        self.units.remove(ur)
        self.scheduler.started(job, placement)
        self.t_first = self.t_first or time.monotonic()
        ur.place(placement, self.hw, running)
        return ur

    def finished(self, ur: UnitRun) -> None:
        self.scheduler.finished(ur.job)

    def schedule_line(self, records: list[report.HeavyRecord]) -> str:
        """The packing scheduler's line under the heavy table: wall time against one at a time."""
        if self.t_first is None:
            return ""
        return report.schedule_line(records, time.monotonic() - self.t_first, len(self.hw.gpus))

    def again_alone(self, ur: UnitRun) -> None:
        """``ur``'s tests ran out of GPU memory beside another child: they run next, alone."""
        self.finished(ur)
        self.units.insert(0, ur.alone_after_oom())
