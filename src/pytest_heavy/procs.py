"""Child processes through psutil: output draining, process trees, and killing what a child left.

Shared by isolated modules and examples. Each child starts in its own process session, so when it
ends, anything it left behind (vLLM engine workers, dataloader workers, a forgotten server) can be
found by session id, or by the descendants seen while it ran, and killed by name. An isolated
module's child is also a subreaper (``guard_child_tree``), so daemons that left its session stay
its descendants, and it kills them itself when its parent dies.
"""

from __future__ import annotations

import ctypes
import os
import select
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import IO, Any, Protocol

import psutil

POLL_S = 0.01  # without a pidfd
RECHECK_S = 0.1


class Process(Protocol):
    """What every start method hands back: a pid, a non-blocking poll, and signals."""

    pid: int

    def poll(self) -> int | None:
        """The return code once it exited (negative: killed by that signal), else None."""

    def send_signal(self, sig: int) -> None: ...


def wait(proc: Process, timeout: float | None, drains: Sequence[Drain] = (),
         tick: Callable[[], None] | None = None) -> int | None:
    """The return code, or None when ``timeout`` seconds passed first (None: no limit).

    Sleeps in ``select`` on a pidfd (Linux 5.3+), which wakes the moment the process exits: no polling
    delay is added to a short example or child. ``poll()`` is still asked at least every
    ``RECHECK_S``, so a pid that was reaped elsewhere (a template's child) cannot hold us up.
    Unthreaded ``drains`` are read in the same ``select`` while it waits, and ``tick`` is called at
    each wake (at least every ``RECHECK_S``).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pidfd = _pidfd(proc.pid)
    try:
        while (code := proc.poll()) is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            step = RECHECK_S if left is None else min(left, RECHECK_S)
            if tick is not None:
                tick()
            if pidfd is None:
                _select(drains, [], min(step, POLL_S))
            else:
                _select(drains, [pidfd], step)
        return code
    finally:
        if pidfd is not None:
            os.close(pidfd)


def pump(drains: Sequence[Drain], timeout: float) -> None:
    """Read the drains until each reached EOF or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while (polled := [d for d in drains if d.polled()]) and (left := deadline - time.monotonic()) > 0:
        _select(polled, [], left)
    for drain in drains:  # those handed to a thread: wait for it
        if not drain.polled():
            drain.join(max(0.0, deadline - time.monotonic()))


def _select(drains: Sequence[Drain], others: list[int], timeout: float) -> None:
    """One ``select`` on ``others`` and the open unthreaded drains; reads a chunk from each ready one."""
    polled = {d.fileno(): d for d in drains if d.polled()}
    ready, _, _ = select.select([*others, *polled], [], [], timeout)
    for fd in ready:
        if fd in polled:
            polled[fd].pump()


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):  # not Linux, an old kernel, or the process is gone already
        return None


class Drain:
    """Read a pipe to its end so the writer never blocks on a full pipe: in a thread of its own, or,
    with ``threaded=False``, from the caller's ``wait``/``pump`` (no thread to start per example;
    ``background`` hands it to a thread later, when the caller has other waits to do).

    Keeps the last ``tail_bytes`` (for crash messages) and, with ``keep``, everything up to
    ``keep_bytes`` (for report sections); with ``echo`` the bytes are also written through live.
    """

    def __init__(self, stream: IO[bytes], *, keep: bool = False, keep_bytes: int = 8 << 20,
                 tail_bytes: int = 64 << 10, echo: IO[bytes] | None = None, threaded: bool = True) -> None:
        self._stream = stream
        self._keep = keep
        self._keep_bytes = keep_bytes
        self._kept: list[bytes] = []
        self._kept_size = 0
        self.truncated = False
        self._tail: deque[bytes] = deque()
        self._tail_size = 0
        self._tail_bytes = tail_bytes
        self.size = 0  # bytes read so far
        self._echo = echo
        self._eof = False
        self._thread: threading.Thread | None = None
        if threaded:
            self.background()

    def background(self) -> None:
        """Read the rest in a thread of its own."""
        if self._thread is None and not self._eof:
            self._thread = threading.Thread(target=self._run, name="heavy-drain", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while self.pump():
            pass

    def fileno(self) -> int:
        return self._stream.fileno()

    def polled(self) -> bool:
        """Whether the caller reads this drain (unthreaded and not at EOF yet)."""
        return self._thread is None and not self._eof

    def pump(self) -> bool:
        """Read one chunk (blocks until there is one); False once the pipe reached its end."""
        read = getattr(self._stream, "read1", self._stream.read)
        chunk = read(65536)
        if not chunk:
            self._eof = True
            self._stream.close()
            return False
        if self._echo is not None:
            self._echo.write(chunk)
            self._echo.flush()
        if self._keep:
            if self._kept_size < self._keep_bytes:
                self._kept.append(chunk)
                self._kept_size += len(chunk)
            else:
                self.truncated = True
        self.size += len(chunk)
        self._tail.append(chunk)
        self._tail_size += len(chunk)
        while self._tail_size > self._tail_bytes and len(self._tail) > 1:
            self._tail_size -= len(self._tail.popleft())
        return True

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)
        elif not self._eof:
            pump([self], 1e9 if timeout is None else timeout)

    def reading(self) -> bool:
        """Whether the pipe is still open: some process still holds its write end."""
        return self._thread.is_alive() if self._thread is not None else not self._eof

    def text(self) -> str:
        data = b"".join(self._kept).decode(errors="replace")
        return data + ("\n[... output truncated ...]\n" if self.truncated else "")

    def tail(self, lines: int = 40, start_at: str | None = None, max_lines: int = 200) -> str:
        """The last ``lines`` lines; or, when a line starting with ``start_at`` is among the last
        ``max_lines``, everything from the last such line (a crash dump's header and its stack)."""
        text = b"".join(self._tail).decode(errors="replace").splitlines()
        if start_at is not None:
            heads = [i for i, line in enumerate(text[-max_lines:]) if line.startswith(start_at)]
            if heads:
                return "\n".join(text[-max_lines:][heads[-1]:])
        return "\n".join(text[-lines:])


def describe(proc: psutil.Process) -> str:
    """'pid 123 (python worker.py --x)' for messages; tolerant of processes that just died."""
    try:
        cmd = " ".join(proc.cmdline()) or proc.name()
    except (psutil.Error, OSError):
        cmd = "?"
    return f"pid {proc.pid} ({cmd[:120]})"


def tree(pid: int, descendants: bool = True) -> list[psutil.Process]:
    """The process and its live descendants (empty when it is gone); zombies are dead already.

    Listing descendants reads every process's parent in /proc (about 2 ms for 100 processes); a
    process that was just started has none yet: ``descendants=False`` reads only its own entry.
    """
    try:
        root = psutil.Process(pid)
        if not descendants:
            return [root]
        return [root, *(p for p in root.children(recursive=True) if _alive(p))]
    except psutil.Error:
        return []


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


def session_members(sid: int) -> list[psutil.Process]:
    """Live processes whose session id is ``sid`` (orphans keep it when reparented).

    One ``getsid`` per pid; a ``psutil.Process`` (which reads /proc) only for members: after every
    example and child, and usually there are none.
    """
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

    ``seen`` covers grandchildren that started a session of their own. psutil checks each process's
    creation time, so a reused pid is never killed by mistake. Returns who was killed.
    """
    victims: dict[int, psutil.Process] = {p.pid: p for p in session_members(sid)}
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
