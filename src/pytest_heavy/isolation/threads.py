"""Which threads of this process make forking it unsafe now.

``fork()`` copies only the calling thread. A thread the child lacks is harmless when nothing in the
child waits for it, and fatal when something does: after a parallel torch op, GNU OpenMP's pool
(libgomp) is parked in a futex, and the child's first parallel op waits for those workers forever.
``import torch`` alone starts a native thread too, idle in a futex inside libc, and a child forked
beside it runs torch ops normally. Counting threads cannot tell the two apart; where each one is
parked can: the kernel names, per thread, the syscall it is blocked in and its user-space program
counter (``/proc/self/task/TID/syscall``), and ``/proc/self/maps`` names the library that address
belongs to. libgomp makes its futex calls from its own code, so its parked workers point into it.

The rule, for every thread that is neither the main thread, nor ours, nor in the baseline taken
before any test module was imported:

- a Python ``threading`` thread: unsafe (it may hold a lock the child needs, and it runs the
  user's code, which we cannot judge);
- blocked with its program counter in an OpenMP runtime: unsafe, an OpenMP pool;
- running: sampled a few times; still running after that, unsafe (a pool that still spins after
  its op looks like this);
- blocked anywhere else: idle, allowed.

Where ``/proc`` cannot say (another OS, a kernel without the syscall file), any such thread is unsafe.
"""

from __future__ import annotations

import bisect
import os
import threading
import time
import warnings
from dataclasses import dataclass

OPENMP_RUNTIMES = ("libgomp", "libomp", "libiomp")  # GNU, LLVM and Intel OpenMP
SAMPLES = 5  # looks at a running thread before calling it busy
SAMPLE_INTERVAL_S = 0.01

# Threads already running when the session started, before any test module was imported: those
# of plugins' configure hooks (pytest-rerunfailures' status server, for one).
THREAD_BASELINE: set[int] = set()


def thread_ids() -> set[int]:
    """Kernel thread ids of this process (threading's view, which lacks native threads, without /proc)."""
    try:
        return {int(tid) for tid in os.listdir("/proc/self/task")}
    except OSError:
        return {t.native_id or 0 for t in threading.enumerate()}


def record_thread_baseline() -> None:
    """Remember the threads running now (the main thread aside) as harmless to fork beside."""
    THREAD_BASELINE.clear()
    THREAD_BASELINE.update(thread_ids() - {threading.main_thread().native_id or 0})


def foreign_threads() -> set[int]:
    """Threads that are neither the main thread, nor ours (named ``heavy-*``), nor in the baseline."""
    ours = {t.native_id for t in threading.enumerate() if t.name.startswith("heavy-")}
    return thread_ids() - ours - THREAD_BASELINE - {threading.main_thread().native_id or 0}


@dataclass(frozen=True)
class CodeMap:
    """The executable mappings of this process, to name the library a program counter lies in."""

    starts: list[int]
    ends: list[int]
    paths: list[str]

    @classmethod
    def read(cls) -> CodeMap | None:
        try:
            with open("/proc/self/maps") as fh:
                lines = fh.read().splitlines()
        except OSError:
            return None
        spans = []
        for line in lines:
            fields = line.split(maxsplit=5)
            if len(fields) < 2 or "x" not in fields[1]:
                continue
            start, end = (int(part, 16) for part in fields[0].split("-"))
            spans.append((start, end, fields[5] if len(fields) > 5 else ""))
        spans.sort()
        return cls([s[0] for s in spans], [s[1] for s in spans], [s[2] for s in spans])

    def library(self, address: int) -> str:
        """The file name of the mapping holding ``address`` ('' when none does)."""
        i = bisect.bisect_right(self.starts, address) - 1
        return os.path.basename(self.paths[i]) if i >= 0 and address < self.ends[i] else ""


def parked_in(tid: int, code: CodeMap) -> str | None:
    """Where thread ``tid`` is blocked: the library of its program counter ('' outside any),
    'running' while it runs, 'gone' once it exited; None when the kernel does not say."""
    try:
        with open(f"/proc/self/task/{tid}/syscall") as fh:
            fields = fh.read().split()
    except FileNotFoundError:
        return "gone"
    except OSError:
        return None
    if not fields:
        return None
    if fields[0] == "running" or fields[0] == "-1":  # -1: stopped outside a syscall, as good as running
        return "running"
    return code.library(int(fields[-1], 16)) if len(fields) > 2 else None


def openmp_runtime(library: str) -> bool:
    return library.startswith(OPENMP_RUNTIMES)


def python_thread_names(tids: set[int]) -> list[str]:
    return sorted(t.name for t in threading.enumerate() if t.native_id in tids)


def busy_reason(tids: set[int]) -> str | None:
    """One look at the foreign threads: why they make fork unsafe, 'running' when some still run
    (look again), or None when every one is idle."""
    names = python_thread_names(tids)
    if names:
        plural = "s" if len(names) > 1 else ""
        return f"{len(names)} Python thread{plural} started since the session began ({', '.join(names)})"
    code = CodeMap.read()
    places = [parked_in(tid, code) for tid in sorted(tids)] if code is not None else [None]
    if None in places:
        plural = "s" if len(tids) > 1 else ""
        return f"{len(tids)} other thread{plural} running (this system does not say what they are)"
    pools = sorted({p for p in places if p and openmp_runtime(p)})
    if pools:
        return f"an OpenMP pool ({', '.join(pools)}) started by a parallel op"
    return "running" if "running" in places else None


def thread_unsafe_reason() -> str | None:
    """Why the threads of this process make a fork unsafe now, or None when none do."""
    for _ in range(SAMPLES):
        tids = foreign_threads()
        reason = busy_reason(tids) if tids else None
        if reason != "running":
            return reason
        time.sleep(SAMPLE_INTERVAL_S)
    spent = round(SAMPLES * SAMPLE_INTERVAL_S * 1000)
    return f"a native thread still running after {spent} ms (an OpenMP pool spinning after a parallel op?)"


FORK_WARNING = r"This process \(pid=\d+\) is multi-threaded, use of fork\(\) may lead to deadlocks"


def fork_quietly() -> int:
    """``os.fork()`` without Python 3.12's DeprecationWarning about other threads: the caller
    checked them (``thread_unsafe_reason``), and the warning would land in the user's session,
    or fail it under ``-W error``. The filter is undone on both sides of the fork."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=FORK_WARNING, category=DeprecationWarning)
        return os.fork()
