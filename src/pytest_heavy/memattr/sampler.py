"""Per-test memory figures, measured inside the process that runs the tests.

The parent's monitor sees a child's tree from outside and only learns where a test starts or ends
from events that reach it up to a pump cycle late; measuring in the process that runs the test gives
readings taken exactly at setup start, call end and teardown end. Between those marks the peak comes
from two sources: a sampling thread over the whole process tree (workers, engine processes) and the
kernel's own high-water mark of this process (``VmHWM``, reset at each test through
``/proc/self/clear_refs``), which catches a spike shorter than the sampling interval.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import psutil

from .. import procs
from ..memory import MIB, GpuReader, TreeMonitor


@dataclass
class Reading:
    """The tree's memory at one moment (or the peak of a window)."""

    rss_mib: float = 0.0
    # position among the visible GPUs (CUDA's numbering) -> MiB of this tree's processes; None: no GPU
    gpu_mib: dict[int, float] | None = None

    def gpu_total(self) -> float | None:
        return None if self.gpu_mib is None else sum(self.gpu_mib.values())

    def peak_with(self, other: Reading) -> Reading:
        gpu = None
        if self.gpu_mib is not None or other.gpu_mib is not None:
            mine, theirs = self.gpu_mib or {}, other.gpu_mib or {}
            gpu = {i: max(mine.get(i, 0.0), theirs.get(i, 0.0)) for i in {*mine, *theirs}}
        return Reading(max(self.rss_mib, other.rss_mib), gpu)


PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` from ``/proc/<pid>/task/<tid>/children`` (Linux >= 3.5)."""
    found: list[int] = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/children", encoding="ascii") as fh:
                found += [int(x) for x in fh.read().split()]
        except FileNotFoundError:
            if tid == str(pid):
                raise  # no children files on this kernel: the caller falls back to psutil
        except OSError:
            continue  # a thread that just ended
    return found


def _tree_rss_proc(pid: int, skip: frozenset[int] = frozenset()) -> tuple[int, set[int]]:
    """(RSS bytes, pids) of the tree, less the subtrees rooted at ``skip``, through /proc alone: about
    50x cheaper than psutil's ``children(recursive=True)``, which reads every process on the machine
    to build a parent map."""
    pids, queue, rss = set(), [pid], 0
    while queue:
        current = queue.pop()
        try:
            with open(f"/proc/{current}/statm", encoding="ascii") as fh:
                rss += int(fh.read().split()[1]) * PAGE
            kids = _children(current)
        except FileNotFoundError:
            if current == pid and not os.path.exists(f"/proc/{pid}"):
                break  # gone
            if current == pid:
                raise
            continue
        except (OSError, ValueError, IndexError):
            continue
        pids.add(current)
        queue += [k for k in kids if k not in pids and k not in skip]
    return rss, pids


def _tree_rss_psutil(pid: int, skip: frozenset[int] = frozenset()) -> tuple[int, set[int]]:
    rss, pids = 0, set()
    members = procs.tree(pid)
    parent = {}
    for proc in members:
        try:
            parent[proc.pid] = proc.ppid()
        except psutil.Error:
            continue
    for proc in members:
        ancestor = proc.pid
        while ancestor in parent and ancestor != pid and ancestor not in skip:
            ancestor = parent[ancestor]
        if ancestor in skip:
            continue
        try:
            rss += proc.memory_info().rss
            pids.add(proc.pid)
        except psutil.Error:
            continue
    return rss, pids


_FAST = True  # /proc children files available; turned off at the first sign they are not


def tree_rss(pid: int, skip: frozenset[int] = frozenset()) -> tuple[int, set[int]]:
    global _FAST
    if _FAST:
        try:
            return _tree_rss_proc(pid, skip)
        except OSError:
            _FAST = False
    return _tree_rss_psutil(pid, skip)


def other_sessions(pid: int) -> frozenset[int]:
    """Descendants of ``pid`` that lead a session of their own, as every process pytest-heavy starts
    does (module children, the template, examples)."""
    found = set()
    for member in tree_rss(pid)[1] - {pid}:
        try:
            if os.getsid(member) == member:
                found.add(member)
        except OSError:
            continue
    return frozenset(found)


def read_tree(pid: int, gpu: GpuReader | None, skip: frozenset[int] = frozenset()) -> Reading:
    """RSS of ``pid`` and its descendants (less the subtrees at ``skip``), and their GPU memory per
    device."""
    rss, pids = tree_rss(pid, skip)
    per_device = None
    if gpu is not None:
        per_device = {position: float(sum(mib for p, mib in usage.items() if p in pids))
                      for position, usage in enumerate(gpu.process_usage_by_device())}
    return Reading(rss / MIB, per_device)


def own_peak_mib() -> float | None:
    """This process's RSS high-water mark (Linux ``VmHWM``), or None where it cannot be read."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def reset_own_peak() -> bool:
    """Reset ``VmHWM`` to the current RSS (``clear_refs`` value 5, Linux >= 4.0); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


@dataclass
class Window:
    """What the monitor gathers between ``open_window`` and ``close_window``: one test."""

    peak: Reading = field(default_factory=Reading)
    samples: list[tuple[float, float, float | None]] = field(default_factory=list)  # (time, rss, gpu)


class TestMonitor(TreeMonitor):
    """This process's tree, sampled at test boundaries and every ``interval`` seconds in between.

    In the pytest parent (``in_parent``) the subtrees that already lead sessions of their own when a
    test starts are left out: the template and the module children running beside the test are
    pytest-heavy's, not the test's (what the test itself starts is counted, sessions included).

    Its thread is named ``heavy-monitor-<pid>`` (``heavy-*``, like the parent's thread for each
    child), so a pytest process that measures its own tests may still fork children
    (``fork_unsafe_reason`` counts only foreign threads). A fork does not inherit the thread:
    ``Measure`` starts a new monitor there.
    """

    __test__ = False  # not a pytest test class, whatever its name says

    def __init__(self, gpu: GpuReader | None, interval: float, in_parent: bool) -> None:
        self._lock = threading.Lock()
        self._window = Window()
        self._hwm = reset_own_peak()
        self._in_parent = in_parent
        self._skip: frozenset[int] = frozenset()
        super().__init__(os.getpid(), gpu, interval)

    def _sample(self) -> Reading:  # type: ignore[override]
        reading = read_tree(self.pid, self._gpu, self._skip)
        with self._lock:
            self._window.peak = self._window.peak.peak_with(reading)
            self._window.samples.append((time.time(), reading.rss_mib, reading.gpu_total()))
        return reading

    def mark(self) -> Reading:
        """A reading now (it counts towards the window's peak and its samples too)."""
        return self._sample()

    def open_window(self) -> Reading:
        """Start a test: forget the previous window, reset the high-water mark, read now."""
        with self._lock:
            self._window = Window()
        if self._in_parent:
            self._skip = other_sessions(self.pid)
        if self._hwm:
            reset_own_peak()
        return self.mark()

    def window_peak(self) -> Reading:
        """The peak since ``open_window``: sampled tree, or this process's own high-water mark."""
        with self._lock:
            peak = Reading(self._window.peak.rss_mib,
                           dict(self._window.peak.gpu_mib) if self._window.peak.gpu_mib is not None else None)
        own = own_peak_mib() if self._hwm else None
        if own is not None:
            peak.rss_mib = max(peak.rss_mib, own)
        return peak

    def samples(self) -> list[tuple[float, float, float | None]]:
        with self._lock:
            return list(self._window.samples)
