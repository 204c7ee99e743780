"""``--heavy-workers auto``: pack heavy modules onto the GPUs and the RAM by their recorded peaks.

The rules (docs/parallel.md, "How `auto` packs"):

- a GPU module's child is pinned to as many GPUs as it needs (``requires_gpu(count=N)``, else 1), of
  those at least as large as its marks ask (``requires_vram(gib)``) where enough are;
- a GPU takes several children only where it allows several processes (compute mode DEFAULT, or MPS
  running), and only while the recorded peaks of the children on it, each plus the release tolerance
  (``heavy_vram_tolerance_mib``), fit in what it had free at the probe; in EXCLUSIVE_PROCESS without
  MPS (and PROHIBITED) it takes one;
- a module without a recorded GPU peak runs alone on its GPUs, and nobody joins it, until a run has
  recorded one; so does a module re-run after an OOM while sharing (``Job.alone``);
- ``requires_heavy_ram`` modules run side by side while their recorded RSS peaks (for one never
  recorded, the largest amount its marks ask for, ``requires_heavy_ram(gib=64)``, else ``heavy_ram_gib``)
  add up to no more than the RAM available at the probe;
- children without a GPU: at most one per CPU;
- order: re-runs after an OOM first, then modules never recorded (the unknown may be long), then the
  longest recorded wall time first (LPT); a job that does not fit now lets a later one start
  (backfilling). A job that would not fit even on an idle machine still starts once nothing runs
  where it needs to, so the run always progresses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ...hardware import Hardware
from ...records import ModulePeaks
from .base import Job, Placement

SHAREABLE_MODES = ("default",)  # several processes per GPU; with MPS, exclusive modes take MPS clients too


class PackingScheduler:
    name = "packing"
    reorders = True

    def __init__(self, hw: Hardware, peaks: Mapping[str, ModulePeaks], tolerance_mib: int,
                 ram_need_mib: int) -> None:
        self.hw = hw
        self.peaks = peaks
        self.tolerance_mib = tolerance_mib
        self.ram_need_mib = ram_need_mib  # what a requires_heavy_ram module without a record is taken to need
        self.running: dict[Job, Placement] = {}

    # --- the Scheduler protocol -------------------------------------------------------------------

    def pick(self, ready: Sequence[Job]) -> tuple[Job, Placement] | None:
        for job in self.order(ready):
            placement = self.place(job)
            if placement is not None:
                return job, placement
        return None

    def started(self, job: Job, placement: Placement) -> None:
        self.running[job] = placement

    def finished(self, job: Job) -> None:
        del self.running[job]

    # --- decisions --------------------------------------------------------------------------------

    def order(self, jobs: Sequence[Job]) -> list[Job]:
        """OOM re-runs, then unrecorded modules, then longest recorded first; ties in collection order."""
        def key(job: Job) -> tuple[int, float]:
            record = self.peaks.get(job.name)
            if job.alone:
                return (0, 0.0)
            return (1, 0.0) if record is None else (2, -record.wall_s)

        return sorted(jobs, key=key)  # stable: collection order breaks ties

    def gpu_need_mib(self, job: Job) -> float | None:
        """The recorded peak on its busiest GPU plus the tolerance; None when never measured on a GPU."""
        record = self.peaks.get(job.name)
        if record is None or record.gpu_mib is None:
            return None
        return max(record.gpu_mib, default=0.0) + self.tolerance_mib

    def rss_need_mib(self, job: Job) -> float:
        record = self.peaks.get(job.name)
        if record is not None:
            return record.rss_mib
        return job.ram_mib or float(self.ram_need_mib)

    def place(self, job: Job) -> Placement | None:
        if job.heavy_ram and not self.ram_fits(job):
            return None
        if job.gpus == 0 or not self.hw.gpus:
            cpu_children = sum(1 for placement in self.running.values() if not placement.gpus)
            return Placement() if cpu_children < max(self.hw.cpus, 1) else None
        need = self.gpu_need_mib(job)
        exclusive = job.alone or need is None
        large = [i for i, g in enumerate(self.hw.gpus) if g.total_mib >= job.vram_mib]
        wanted = min(job.gpus, len(self.hw.gpus))  # more than exist (--heavy-ignore-gpu-check): all of them
        candidates = large if len(large) >= wanted else range(len(self.hw.gpus))  # none large enough: ignored
        fits = [i for i in candidates if self.gpu_fits(i, need, exclusive)]
        if len(fits) < wanted:
            return None
        # Spread: the GPU with the fewest children, then the most room, then the lowest index.
        fits.sort(key=lambda i: (len(self.on_gpu(i)), -self.free_mib(i), i))
        return Placement(tuple(sorted(fits[:wanted])), exclusive)

    def on_gpu(self, index: int) -> list[Job]:
        return [job for job, placement in self.running.items() if index in placement.gpus]

    def shareable(self, index: int) -> bool:
        mode = self.hw.gpus[index].compute_mode
        return mode in SHAREABLE_MODES or (self.hw.mps and mode in ("exclusive_process", "exclusive_thread"))

    def free_mib(self, index: int) -> float:
        gpu = self.hw.gpus[index]
        taken = sum(self.gpu_need_mib(job) or 0.0 for job in self.on_gpu(index))
        return gpu.total_mib - gpu.used_mib - taken

    def gpu_fits(self, index: int, need: float | None, exclusive: bool) -> bool:
        here = self.on_gpu(index)
        if not here:
            return True  # an idle GPU takes any job, even one larger than it: it runs alone and may OOM
        if exclusive or need is None or not self.shareable(index):
            return False
        if any(self.running[job].exclusive for job in here):
            return False
        return need <= self.free_mib(index)

    def ram_fits(self, job: Job) -> bool:
        beside = [j for j in self.running if j.heavy_ram]
        if not beside:
            return True
        used = sum(self.rss_need_mib(j) for j in beside)
        return used + self.rss_need_mib(job) <= self.hw.ram_available_mib
