"""Which pending heavy module may start now, and on which GPUs: the controller's scheduler seam.

The controller (``isolation/controller.py``) owns the loop and the children; a scheduler only decides.
It is handed the jobs that are ready (a ``Job`` per heavy module: what it needs) and answers with one
job and its ``Placement`` (the GPUs its child is pinned to, through ``CUDA_VISIBLE_DEVICES`` by UUID),
or None when nothing may start before a running child ends. One strategy per module, as in
pytest-xdist's ``scheduler/`` package:

- ``count.py``: ``--heavy-workers N`` (the default, N = 1): N children at once in collection order,
  one GPU child at a time where the parent trap routes GPU modules (EXCLUSIVE_PROCESS without MPS);
- ``packing.py``: ``--heavy-workers auto``: children packed onto the GPUs and the RAM by the peaks
  recorded in the durations store, longest recorded module first.
"""

from __future__ import annotations

from collections.abc import Mapping

from ...hardware import Hardware
from ...records import ModulePeaks
from ...settings import Settings
from .base import Job, Placement, Scheduler

__all__ = ["Job", "Placement", "Scheduler", "make"]


def make(settings: Settings, hw: Hardware, peaks: Mapping[str, ModulePeaks]) -> Scheduler:
    """The scheduler ``--heavy-workers`` asks for."""
    if settings.packing:
        from .packing import PackingScheduler

        return PackingScheduler(hw, peaks, tolerance_mib=settings.vram_tolerance_mib,
                                ram_need_mib=int(settings.ram_gib * 1024))
    from .count import CountScheduler

    return CountScheduler(settings.workers)
