"""The one way a supervised process (an isolated module's child, an example) is watched and ended.

Both kinds of process run in a session of their own and may start grandchildren that escape it.
The sequence is the same for both: sample the tree while it runs (peak RSS and GPU memory); on a
timeout ask for every thread's Python stack, SIGTERM the whole tree, SIGKILL the process after a
grace period; once it is gone, SIGKILL whatever of its tree is left and wait for the GPU memory it
held to come back. Every wait here has a bound.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence

import psutil

from . import draining, memory, procs, wire
from .hardware import HARDWARE_ENV, Hardware
from .settings import Settings

DEFAULT_ALLOC_CONF = "expandable_segments:True"
STACK_WAIT_S = 2.0  # how long faulthandler may take to write the stacks asked for with STACK_SIGNAL
TERM_GRACE_S = 5.0  # SIGTERM to SIGKILL: coverage (sigterm = true) saves its data in this time
EXIT_GRACE_S = 10.0  # after its event stream ended, how long a child may take to exit
STREAM_GRACE_S = 2.0  # after a child exited, how long a grandchild may hold its event stream open
EOF_WAIT_S = 0.1  # after an example exited, how long its output may take to reach EOF before its
# pipes' holders are looked for in /proc (a daemon that inherited them keeps them open)


def child_environment(settings: Settings, hw: Hardware, *, isolated: bool) -> dict[str, str]:
    """A copy of the parent's environment (coverage's subprocess patch needs a copy), plus ours.

    ``PYTORCH_CUDA_ALLOC_CONF`` lowers fragmentation for model-sized allocations unless the user chose
    a value; ``heavy_env`` lines come last so a project can override anything. ``isolated`` marks an
    isolated module's child (isolation off there, hardware read from the parent's probe).
    """
    env = dict(os.environ)
    env.setdefault("PYTORCH_CUDA_ALLOC_CONF", DEFAULT_ALLOC_CONF)
    env[HARDWARE_ENV] = hw.to_json()
    # The child marker is never passed on as it is here (this process may be a child itself): a new
    # isolated child gets a fresh one, an example none.
    env.pop(wire.CHILD_ENV, None)
    env.pop(wire.CHILD_PID_ENV, None)
    if isolated:
        env[wire.CHILD_ENV] = "1"
    env.update(dict(settings.env))
    return env


class Supervisor:
    """One supervised process: its tree monitor, the end sequence, and the GPU memory it held."""

    def __init__(self, proc: draining.Process, gpu: memory.GpuReader | None, baseline_gpu: int | None,
                 label: str, positions: Sequence[int] | None = None, foreign_at_start: int = 0,
                 just_started: bool = False, threaded: bool = True) -> None:
        self.proc = proc
        self.gpu = gpu
        self.baseline_gpu = baseline_gpu  # device memory used before the process started
        self.positions = positions  # the GPUs it was pinned to (indices into hw.gpus); None: all
        self.foreign_at_start = foreign_at_start  # what other processes held on them at its start
        self.label = label  # how messages name the process itself: "the example", "the child"
        # an example: just started, and its waiting thread ticks the monitor (see TreeMonitor)
        self.monitor = memory.TreeMonitor(proc.pid, gpu, just_started=just_started, threaded=threaded)
        self.timed_out = False
        self.terminated: list[str] = []  # SIGTERMed by end()
        self.killed: list[str] = []  # SIGKILLed by reap(): survivors and leftovers

    def seen(self) -> list[psutil.Process]:
        """Every descendant observed so far, including those that left the process's session."""
        return list(self.monitor.peaks.seen.values())

    def end(self, written: Callable[[], int] | None = None) -> None:
        """Stacks first when ``written`` (bytes of the dump's destination so far) is given, then SIGTERM
        to the process's session and every descendant seen, then SIGKILL after ``TERM_GRACE_S``."""
        if written is not None:
            dump_stacks(self.proc, written)
        self.terminated = terminate(self.proc, self.seen(), self.label)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            draining.wait(self.proc, None)

    def time_out(self, written: Callable[[], int] | None) -> None:
        self.timed_out = True
        self.end(written)

    def reap(self, also: Iterable[psutil.Process] = ()) -> memory.Peaks:
        """The process is done (or is made so): stop sampling, SIGKILL what is left of its tree."""
        peaks = self.monitor.stop()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            draining.wait(self.proc, None)
        self.killed += procs.kill_leftovers(self.proc.pid, [*peaks.seen.values(), *also])
        return peaks

    def release(self, settings: Settings, pids: set[int] | None, shared: bool = False) -> memory.Release:
        """Wait (bounded) until the GPU memory it held is back within tolerance of the baseline, on its
        own GPUs; ``shared``: other children ran there too, and what they hold is not counted."""
        own = {self.proc.pid, *self.monitor.peaks.seen}
        return memory.wait_released(self.gpu, self.baseline_gpu, settings.vram_tolerance_mib,
                                    settings.release_timeout, pids=pids, positions=self.positions,
                                    shared=memory.Shared(own, self.foreign_at_start) if shared else None,
                                    own=own)


def dump_stacks(proc: draining.Process, written: Callable[[], int]) -> None:
    """Ask the process's faulthandler for every thread's stack; wait until the dump stops growing."""
    try:
        proc.send_signal(wire.STACK_SIGNAL)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + STACK_WAIT_S
    size = -1
    while time.monotonic() < deadline:
        time.sleep(0.05)
        current = written()
        if current and current == size:  # written and no longer growing
            return
        size = current


def terminate(proc: draining.Process, seen: Iterable[psutil.Process], label: str) -> list[str]:
    """SIGTERM the process's session and every descendant seen; wait a grace period for them.

    Survivors are SIGKILLed afterwards (``Supervisor.end`` and ``reap``). Returns who was signalled.
    """
    names = []
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        names.append(f"pid {proc.pid} ({label})")
    victims = {p.pid: p for p in procs.session_members(proc.pid)}
    for p in seen:
        if p.pid not in victims and p.is_running():
            victims[p.pid] = p
    for pid in (os.getpid(), proc.pid):
        victims.pop(pid, None)
    for victim in victims.values():
        try:
            names.append(procs.describe(victim))
            victim.terminate()
        except psutil.Error:
            continue
    deadline = time.monotonic() + TERM_GRACE_S
    draining.wait(proc, TERM_GRACE_S)
    # psutil waits only for the others: it must never reap ``proc``, whose status its owner reads.
    psutil.wait_procs(list(victims.values()),
                      timeout=max(0.0, deadline - time.monotonic()))
    return names
