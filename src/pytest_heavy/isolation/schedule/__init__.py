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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from ...hardware import Hardware
from ...settings import Settings
from ...split.durations import ModulePeaks


@dataclass(frozen=True)
class Job:
    """What one heavy module needs, as the scheduler sees it."""

    name: str  # the module's path, as in the heavy table and the peaks store
    gpus: int = 0  # GPUs its child uses (requires_gpu(count=N)); 0: none
    heavy_ram: bool = False  # requires_heavy_ram: its RSS counts against the RAM budget
    routed: bool = False  # GPU tests routed into a child by the parent trap (one such child at a time)
    alone: bool = False  # must have its GPUs to itself: a re-run after an OOM while sharing


@dataclass(frozen=True)
class Placement:
    """Where a job's child runs: GPUs as indices into ``Hardware.gpus`` (none: not pinned)."""

    gpus: tuple[int, ...] = ()
    exclusive: bool = False  # no other child may join these GPUs while it runs

    @property
    def may_share(self) -> bool:
        return bool(self.gpus) and not self.exclusive

    def env(self, hw: Hardware) -> dict[str, str]:
        """``CUDA_VISIBLE_DEVICES`` by UUID (NVML and CUDA agree on UUIDs, not always on indices)."""
        return {"CUDA_VISIBLE_DEVICES": ",".join(hw.gpus[i].uuid for i in self.gpus)} if self.gpus else {}

    def indices(self, hw: Hardware) -> list[int]:
        """The NVML indices of its GPUs, as ``nvidia-smi`` and the heavy table name them."""
        return [hw.gpus[i].index for i in self.gpus]


class Scheduler(Protocol):
    name: str
    # True: every heavy job is ready from the start and the scheduler picks the order; False: jobs
    # become ready as the loop reaches them in collection order, interleaved with the parent's tests.
    reorders: bool

    def pick(self, ready: Sequence[Job]) -> tuple[Job, Placement] | None:
        """The job (one of ``ready``) to start now and where, or None until a running one finishes."""
        ...

    def started(self, job: Job, placement: Placement) -> None: ...

    def finished(self, job: Job) -> None: ...


def make(settings: Settings, hw: Hardware, peaks: Mapping[str, ModulePeaks]) -> Scheduler:
    """The scheduler ``--heavy-workers`` asks for."""
    if settings.packing:
        from .packing import PackingScheduler

        return PackingScheduler(hw, peaks, tolerance_mib=settings.vram_tolerance_mib,
                                ram_need_mib=int(settings.ram_gib * 1024))
    from .count import CountScheduler

    return CountScheduler(settings.workers)
