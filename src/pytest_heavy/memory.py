"""Memory accounting for a child's process tree: peak RSS (psutil) and GPU memory (NVML).

A monitor thread samples the tree while the child runs. After the child exits, ``wait_released``
polls device memory until it is back within a tolerance of the baseline: the driver frees a dead
process's memory asynchronously, and ``used`` includes reserved memory, so the comparison is
against a baseline taken before the child started, never against zero.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Collection, Sequence
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
        # One entry per hw.gpus position, so scheduler positions index it; None where NVML has no such
        # whole device (a MIG instance selected by CUDA_VISIBLE_DEVICES): not read.
        self.by_position: list[Any] = [by_uuid.get(g.uuid) for g in hw.gpus]
        self.handles = [h for h in self.by_position if h is not None]

    @classmethod
    def open(cls, hw: Hardware) -> GpuReader | None:
        if not hw.gpus or hw.gpus_assumed:
            return None
        try:
            return cls(hw)
        except Exception:  # NVML vanished since the probe: account RSS only
            return None

    def device_used_mib(self, positions: Sequence[int] | None = None) -> int:
        """Used memory of the visible GPUs, or of those at ``positions`` (indices into ``hw.gpus``)."""
        handles = self.handles if positions is None else [
            h for h in (self.by_position[i] for i in positions) if h is not None]
        return sum(int(self._nv.nvmlDeviceGetMemoryInfo(h).used) // MIB for h in handles)

    def process_usage_by_device(self) -> list[dict[int, int]]:
        """Per visible GPU (``hw.gpus`` order), {host pid: MiB} of its compute processes."""
        devices: list[dict[int, int]] = []
        for handle in self.by_position:
            usage: dict[int, int] = {}
            devices.append(usage)
            if handle is None:
                continue
            try:
                running = self._nv.nvmlDeviceGetComputeRunningProcesses(handle)
            except self._nv.NVMLError:
                continue
            for p in running:
                used = p.usedGpuMemory or 0  # None when the driver cannot tell (some containers)
                usage[p.pid] = usage.get(p.pid, 0) + int(used) // MIB
        return devices

    def process_usage_mib(self) -> dict[int, int]:
        """{host pid: MiB} for every compute process on the visible GPUs."""
        usage: dict[int, int] = {}
        for device in self.process_usage_by_device():
            for pid, mib in device.items():
                usage[pid] = usage.get(pid, 0) + mib
        return usage

    def foreign_mib(self, positions: Sequence[int] | None, exclude: set[int]) -> int:
        """MiB that processes other than ``exclude`` hold on the GPUs at ``positions`` (all: None):
        what children sharing those GPUs hold, which a release check must not count."""
        devices = self.process_usage_by_device()
        chosen = range(len(devices)) if positions is None else positions
        return sum(mib for i in chosen for pid, mib in devices[i].items() if pid not in exclude)


@dataclass
class Peaks:
    rss_mib: float = 0.0
    gpu_mib: float | None = None
    gpu_by_device: dict[int, float] = field(default_factory=dict)  # position in hw.gpus -> peak MiB there
    seen: dict[int, psutil.Process] = field(default_factory=dict)  # every descendant observed
    # (time.time(), RSS MiB, GPU MiB or None) per sample: the timeline of --heavy-report-html, seen from
    # outside the process, so a long C call that holds the child's GIL leaves no gap in it
    samples: list[tuple[float, float, float | None]] = field(default_factory=list)

    def gpu_per_device(self, positions: Sequence[int] | None) -> list[float] | None:
        """The peak on each GPU at ``positions`` (the child's CUDA_VISIBLE_DEVICES order); unpinned,
        the peaks of the GPUs it used, in device order. None without a real GPU."""
        if self.gpu_mib is None:
            return None
        if positions is not None:
            return [self.gpu_by_device.get(i, 0.0) for i in positions]
        return [mib for _, mib in sorted(self.gpu_by_device.items()) if mib > 0]


class TreeMonitor:
    """Sample a process tree every ``interval`` seconds until ``stop``: in a daemon thread, or, with
    ``threaded=False``, whenever its owner's wait loop (or reader thread) calls ``tick``; no sample
    is taken once ``stop`` returned."""

    def __init__(self, pid: int, gpu: GpuReader | None, interval: float = 0.1, *,
                 just_started: bool = False, threaded: bool = True) -> None:
        self.pid = pid
        self.peaks = Peaks(gpu_mib=0.0 if gpu else None)
        self._gpu = gpu
        self._interval = interval
        self._stop = threading.Event()
        self._sampling = threading.Lock()  # stop() waits for a sample in progress in another thread
        # just_started: the process cannot have descendants yet, so the first sample reads only its
        # own entry, not every process's parent in /proc (what an example's start pays)
        self._root_only = just_started
        self._sample()  # now, not when the thread first runs: a quick process may be gone by then
        self._root_only = False
        self._next = time.monotonic() + interval
        # threaded=False: the owner calls tick() from its own wait loop (no thread per example)
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._run, name=f"heavy-monitor-{pid}", daemon=True)
            self._thread.start()

    def _sample(self) -> None:
        members = procs.tree(self.pid, descendants=not self._root_only)
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
            pids = {p.pid for p in members}
            total = 0
            for index, usage in enumerate(self._gpu.process_usage_by_device()):
                mib = sum(m for pid, m in usage.items() if pid in pids)
                total += mib
                self.peaks.gpu_by_device[index] = max(self.peaks.gpu_by_device.get(index, 0.0), float(mib))
            self.peaks.gpu_mib = max(self.peaks.gpu_mib or 0.0, float(total))
            gpu = float(total)
        if members:
            self.peaks.samples.append((time.time(), rss / MIB, gpu))
            if len(self.peaks.samples) > MAX_SAMPLES:
                del self.peaks.samples[::2]

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def tick(self) -> None:
        """Sample if an interval has passed since the last tick's sample (an unthreaded monitor)."""
        now = time.monotonic()
        if now >= self._next:
            self._next = now + self._interval
            with self._sampling:
                if not self._stop.is_set():
                    self._sample()

    def due_in(self) -> float:
        """Seconds until the next ``tick`` samples."""
        return max(0.0, self._next - time.monotonic())

    def stop(self) -> Peaks:
        with self._sampling:
            self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return self.peaks


@dataclass
class Shared:
    """A child that shared its GPUs: its own pids, and what the others held there when it started."""

    own: set[int]
    foreign_at_start: int


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


def holders(usage: dict[int, int], own: set[int]) -> list[str]:
    """Who holds GPU memory, for reports (terminal, JSON, HTML, all readable by others): this run's
    processes (``own``, pytest and its descendants) by pid and command line, everyone else's only as a
    count and a sum. Another user's command line can hold paths, tokens or a job's name."""
    ours = own | run_pids()
    named, others, other_mib = [], 0, 0
    for pid, mib in sorted(usage.items()):
        if pid not in ours:
            others, other_mib = others + 1, other_mib + mib
            continue
        try:
            named.append(f"{procs.describe(psutil.Process(pid))} {mib} MiB")
        except psutil.Error:
            named.append(f"pid {pid} {mib} MiB")
    if others:
        named.append(f"{others} other process{'es' if others > 1 else ''} {other_mib} MiB")
    return named


def run_pids() -> set[int]:
    """This pytest process and every live descendant of it."""
    me = psutil.Process()
    return {me.pid, *(p.pid for p in me.children(recursive=True))}


def wait_released(gpu: GpuReader | None, baseline_mib: int | None, tolerance_mib: int,
                  timeout: float, poll: float = 0.2, pids: set[int] | None = None,
                  positions: Sequence[int] | None = None, shared: Shared | None = None,
                  own: Collection[int] = ()) -> Release:
    """Poll until device memory is within ``tolerance_mib`` of ``baseline_mib`` and none of ``pids``
    is still a compute process (its CUDA context is gone), or ``timeout`` passes.

    ``positions``: only these GPUs (the child's own; all by default). ``shared``: the child shared its
    GPUs; what the other processes there hold now, less what they held when it started, is not its own.
    ``own``: the supervised process and its descendants, named in the result when they hold memory.
    """
    if gpu is None or baseline_mib is None:
        return Release(ok=None)
    start = time.monotonic()
    while True:
        used = gpu.device_used_mib(positions)
        if shared is not None:
            used -= gpu.foreign_mib(positions, shared.own) - shared.foreign_at_start
        waited = time.monotonic() - start
        listed = set(gpu.process_usage_mib()) & pids if pids else set()
        if used <= baseline_mib + tolerance_mib and not listed:
            return Release(ok=True, seconds=waited)
        if waited >= timeout:
            return Release(ok=False, seconds=waited, held_mib=max(used - baseline_mib, 0),
                           holders=holders(gpu.process_usage_mib(), {*own, *(pids or ())}))
        time.sleep(poll)
