"""What every scheduler shares: the ``Job`` it is handed, the ``Placement`` it answers with, and the
``Scheduler`` protocol (the seam the controller calls)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ...hardware import Hardware


@dataclass(frozen=True)
class Job:
    """What one heavy module needs, as the scheduler sees it."""

    name: str  # the module's path, as in the heavy table and the peaks store
    gpus: int = 0  # GPUs its child uses (requires_gpu(count=N)); 0: none
    heavy_ram: bool = False  # requires_heavy_ram: its RSS counts against the RAM budget
    routed: bool = False  # GPU tests routed into a child by the parent trap (one such child at a time)
    alone: bool = False  # must have its GPUs to itself: a re-run after an OOM while sharing
    ram_mib: float = 0.0  # RAM its marks ask for (requires_heavy_ram(gib=)); 0: ini heavy_ram_gib
    vram_mib: float = 0.0  # the GPU size its marks ask for (requires_vram): only GPUs that large take it


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
