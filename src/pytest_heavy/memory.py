"""Memory accounting for a child's process tree: peak RSS (psutil) and GPU memory (NVML).

A monitor thread samples the tree while the child runs. After the child exits, ``wait_released``
polls device memory until it is back within a tolerance of the baseline: the driver frees a dead
process's memory asynchronously, and ``used`` includes reserved memory, so the comparison is
against a baseline taken before the child started, never against zero.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import psutil

from . import procs
from .hardware import Hardware

MIB = 1 << 20
MAX_SAMPLES = 36_000  # an hour at 0.1 s; a longer run keeps every other sample from then on


class GpuReader:
    """NVML handles for the visible GPUs, opened once per session; None when there are no real GPUs."""

    def __init__(self, hw: Hardware) -> None:
        import pynvml

        self._nv: Any = pynvml
        pynvml.nvmlInit()
        by_uuid = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            uuid = pynvml.nvmlDeviceGetUUID(handle)
            by_uuid[uuid.decode() if isinstance(uuid, bytes) else uuid] = handle
        # (NVML index, handle) of each visible GPU: per-test figures are kept per device
        self.devices = [(g.index, by_uuid[g.uuid]) for g in hw.gpus if g.uuid in by_uuid]
        self.handles = [handle for _, handle in self.devices]

    @classmethod
    def open(cls, hw: Hardware) -> GpuReader | None:
        if not hw.gpus or hw.gpus_assumed:
            return None
        try:
            return cls(hw)
        except Exception:  # NVML vanished since the probe: account RSS only
            return None

    def device_used_mib(self) -> int:
        return sum(int(self._nv.nvmlDeviceGetMemoryInfo(h).used) // MIB for h in self.handles)

    def process_usage_mib(self) -> dict[int, int]:
        """{host pid: MiB} for every compute process on the visible GPUs."""
        usage: dict[int, int] = {}
        for per_pid in self.usage_by_device().values():
            for pid, mib in per_pid.items():
                usage[pid] = usage.get(pid, 0) + mib
        return usage

    def usage_by_device(self) -> dict[int, dict[int, int]]:
        """{NVML index: {host pid: MiB}} for the visible GPUs (per-test figures are kept per device)."""
        usage: dict[int, dict[int, int]] = {}
        for index, handle in self.devices:
            per_pid = usage.setdefault(index, {})
            try:
                running = self._nv.nvmlDeviceGetComputeRunningProcesses(handle)
            except self._nv.NVMLError:
                continue
            for p in running:
                used = p.usedGpuMemory or 0  # None when the driver cannot tell (some containers)
                per_pid[p.pid] = per_pid.get(p.pid, 0) + int(used) // MIB
        return usage


@dataclass
class Peaks:
    rss_mib: float = 0.0
    gpu_mib: float | None = None
    seen: dict[int, psutil.Process] = field(default_factory=dict)  # every descendant observed
    # (time.time(), RSS MiB, GPU MiB or None) per sample: the timeline of --heavy-report-html, seen from
    # outside the process, so a long C call that holds the child's GIL leaves no gap in it
    samples: list[tuple[float, float, float | None]] = field(default_factory=list)


class TreeMonitor:
    """Sample a process tree every ``interval`` seconds in a daemon thread until ``stop``."""

    def __init__(self, pid: int, gpu: GpuReader | None, interval: float = 0.1) -> None:
        self.pid = pid
        self.peaks = Peaks(gpu_mib=0.0 if gpu else None)
        self._gpu = gpu
        self._interval = interval
        self._stop = threading.Event()
        self._sample()  # now, not when the thread first runs: a quick process may be gone by then
        self._thread = threading.Thread(target=self._run, name=f"heavy-monitor-{pid}", daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        members = procs.tree(self.pid)
        rss = 0
        for proc in members:
            self.peaks.seen.setdefault(proc.pid, proc)
            try:
                rss += proc.memory_info().rss
            except psutil.Error:
                continue
        self.peaks.rss_mib = max(self.peaks.rss_mib, rss / MIB)
        gpu: float | None = None
        if self._gpu is not None and members:
            usage = self._gpu.process_usage_mib()
            pids = {p.pid for p in members}
            gpu = float(sum(mib for pid, mib in usage.items() if pid in pids))
            self.peaks.gpu_mib = max(self.peaks.gpu_mib or 0.0, gpu)
        if members:
            self.peaks.samples.append((time.time(), rss / MIB, gpu))
            if len(self.peaks.samples) > MAX_SAMPLES:
                del self.peaks.samples[::2]

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def stop(self) -> Peaks:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.peaks


@dataclass
class Release:
    """How GPU memory came back after a child: the 'released' column of the heavy table."""

    ok: bool | None  # None: nothing to check (no real GPU)
    seconds: float = 0.0
    held_mib: int = 0
    holders: list[str] = field(default_factory=list)

    def text(self) -> str:
        if self.ok is None:
            return "n/a"
        if self.ok:
            return "yes" if self.seconds < 0.5 else f"after {self.seconds:.1f}s"
        who = ", ".join(self.holders) or "unknown processes"
        return f"NO: {self.held_mib} MiB held by {who}"


def wait_released(gpu: GpuReader | None, baseline_mib: int | None, tolerance_mib: int,
                  timeout: float, poll: float = 0.2, pids: set[int] | None = None) -> Release:
    """Poll until device memory is within ``tolerance_mib`` of ``baseline_mib`` and none of ``pids``
    is still a compute process (its CUDA context is gone), or ``timeout`` passes."""
    if gpu is None or baseline_mib is None:
        return Release(ok=None)
    start = time.monotonic()
    while True:
        used = gpu.device_used_mib()
        waited = time.monotonic() - start
        listed = set(gpu.process_usage_mib()) & pids if pids else set()
        if used <= baseline_mib + tolerance_mib and not listed:
            return Release(ok=True, seconds=waited)
        if waited >= timeout:
            holders = []
            for pid, mib in sorted(gpu.process_usage_mib().items()):
                try:
                    holders.append(f"{procs.describe(psutil.Process(pid))} {mib} MiB")
                except psutil.Error:
                    holders.append(f"pid {pid} {mib} MiB")
            return Release(ok=False, seconds=waited, held_mib=max(used - baseline_mib, 0), holders=holders)
        time.sleep(poll)
