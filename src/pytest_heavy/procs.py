"""Child processes through psutil: process trees, and killing what a child left.

Shared by isolated modules and examples (waiting for a child while reading its output is draining.py).
Each child starts in its own process session, so when it ends, anything it left behind (vLLM engine
workers, dataloader workers, a forgotten server) can be found by session id, or by the descendants seen
while it ran, and killed by name. An isolated module's child is also a subreaper
(``guard_child_tree``), so daemons that left its session stay its descendants, and it kills them
itself when its parent dies.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Iterable
from typing import IO, Any

import psutil


def describe(proc: psutil.Process) -> str:
    """'pid 123 (python worker.py --x)' for messages; tolerant of processes that just died."""
    try:
        cmd = " ".join(proc.cmdline()) or proc.name()
    except (psutil.Error, OSError):
        cmd = "?"
    return f"pid {proc.pid} ({cmd[:120]})"


def tree(pid: int, descendants: bool = True) -> list[psutil.Process]:
    """The process and its live descendants (empty when it is gone); zombies are dead already.

    Descendants come from Linux's per-thread lists of children, read down the tree (a few reads for
    a child that started nothing, as most do); where the kernel keeps no such list, psutil reads
    every process's parent in /proc (about 2 ms for 100 processes, per sample of every child). A
    process that was just started has none yet: ``descendants=False`` reads only its own entry.
    """
    try:
        root = psutil.Process(pid)
        if not descendants:
            return [root]
        found = _descendants(pid)
        below = root.children(recursive=True) if found is None else _processes(found)
        return [root, *(p for p in below if _alive(p))]
    except psutil.Error:
        return []


def _descendants(pid: int) -> list[int] | None:
    """The pids below ``pid``, parents before their children; None where /proc/PID/task/TID/children
    is missing (a kernel without CONFIG_PROC_CHILDREN, or not Linux)."""
    found: list[int] = []
    level = [pid]
    while level:
        below: list[int] = []
        for parent in level:
            try:
                tasks = os.listdir(f"/proc/{parent}/task")
            except OSError:  # it exited meanwhile: its children went to a reaper, which lists them
                continue
            for task in tasks:
                try:
                    with open(f"/proc/{parent}/task/{task}/children", "rb") as fh:
                        below += map(int, fh.read().split())
                except FileNotFoundError:
                    if not os.path.exists(f"/proc/{parent}/task/{task}"):
                        continue  # that thread ended
                    return None
                except OSError:
                    continue
        found += below
        level = below
    return found


def _processes(pids: Iterable[int]) -> list[psutil.Process]:
    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.Error:
            continue
    return processes


def _alive(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def pipe_inodes(*streams: IO[bytes] | None) -> list[int]:
    """The inodes of these pipes, to find their holders later (a stream without a descriptor, such as
    a test's scripted one, has none)."""
    inodes = []
    for stream in filter(None, streams):
        try:
            inodes.append(os.fstat(stream.fileno()).st_ino)
        except OSError:
            continue
    return inodes


def pipe_holders(inodes: Iterable[int]) -> list[psutil.Process]:
    """Other processes with a descriptor on one of these pipes: whoever keeps a child's stream open
    after the child exited (a daemon that inherited it), wherever it went. Linux's /proc only.

    Our own children are never among them: a sibling child just forked (``--heavy-start fork`` with
    workers) holds copies of our pipe ends until it closes them, and is nobody's leftover.
    """
    links = {f"pipe:[{inode}]" for inode in inodes}
    me = os.getpid()
    found = []
    for proc in psutil.process_iter():
        if proc.pid == me:
            continue
        try:
            fds = os.listdir(f"/proc/{proc.pid}/fd")
            if any(os.readlink(f"/proc/{proc.pid}/fd/{fd}") in links for fd in fds) and proc.ppid() != me:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def session_members(sid: int, leader: psutil.Process | None = None) -> list[psutil.Process]:
    """Live processes whose session id is ``sid`` (orphans keep it when reparented).

    ``leader`` is the psutil handle of the session's leader taken while it was ours (it carries its
    creation time). Once the leader was reaped its pid is free, and a process that got the same pid
    and called ``setsid`` leads a session with the same id: when another process holds that pid now,
    the session is not ours and nobody is listed. (The kernel keeps a session's id from being reused
    while any member of it lives, so members never mix two sessions.)

    One ``getsid`` per pid; a ``psutil.Process`` (which reads /proc) only for members: after every
    example and child, and usually there are none.
    """
    if leader is not None and not leader.is_running() and psutil.pid_exists(sid):
        return []  # the pid, so the session id, belongs to someone else now
    found = []
    for pid in psutil.pids():
        try:
            if os.getsid(pid) == sid and _alive(proc := psutil.Process(pid)):
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def kill_leftovers(sid: int, seen: Iterable[psutil.Process] = (), exclude: int | None = None) -> list[str]:
    """SIGKILL what is left of a child's session and of the descendants seen while it ran.

    ``seen`` covers grandchildren that started a session of their own; the leader among them (its pid
    is ``sid``) tells whether the session id was reused since (``session_members``). psutil checks each
    process's creation time, so a reused pid is never killed by mistake. Returns who was killed.
    """
    seen = list(seen)
    leader = next((p for p in seen if p.pid == sid), None)
    victims: dict[int, psutil.Process] = {p.pid: p for p in session_members(sid, leader)}
    for proc in seen:
        if proc.pid not in victims and proc.is_running() and _alive(proc):
            victims[proc.pid] = proc
    victims.pop(os.getpid(), None)
    if exclude is not None:
        victims.pop(exclude, None)
    killed = _kill(victims.values())
    psutil.wait_procs(list(victims.values()), timeout=5)
    return killed


def _kill(victims: Iterable[psutil.Process]) -> list[str]:
    """SIGKILL each process; the names of those it reached (one that just died is skipped)."""
    killed = []
    for proc in victims:
        try:
            label = describe(proc)
            proc.kill()
            killed.append(label)
        except psutil.Error:
            continue
    return killed


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36


def _prctl(option: int, arg: int) -> bool:
    """``prctl(2)`` through libc; False where there is none (not Linux) or it failed."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def guard_child_tree(parent_pid: int) -> None:
    """Called first thing in a child, so that nothing its tests start can outlive the run.

    As a subreaper the child inherits every orphaned descendant, including daemons that double-forked
    into a session of their own, so ``kill_descendants`` still finds them when it finishes. If its
    parent dies, even by SIGKILL, the kernel sends the child SIGTERM, and it kills its whole tree
    before it dies of that signal as it would have (a handler already there, coverage's, still runs).
    """
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        kill_descendants()
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_term)
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        on_term(signal.SIGTERM, None)


def kill_descendants() -> list[str]:
    """SIGKILL every live descendant of this process (as a subreaper: every one it ever had).

    A few rounds: a process killed in one round may have forked after the tree was listed.
    """
    killed: list[str] = []
    for _ in range(3):
        victims = tree(os.getpid())[1:]
        if not victims:
            break
        killed += _kill(victims)
        psutil.wait_procs(victims, timeout=2)
    return killed


def signal_name(returncode: int) -> str:
    """'exit 3' / 'SIGSEGV' for a returncode where negative means killed by that signal."""
    if returncode < 0:
        try:
            return signal.Signals(-returncode).name
        except ValueError:
            return f"signal {-returncode}"
    return f"exit {returncode}"
