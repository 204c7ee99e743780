"""Waiting for a child process while reading its output to the end (``Drain``), for every start method.

A child writes its stdout and stderr into pipes; if nobody reads them, it blocks once a pipe is full.
A ``Drain`` reads one pipe, in a thread of its own or from the caller's ``wait``/``pump``, which sleep
in one ``select`` on the pipes and the child's pidfd. Killing what a child left is procs.py.
"""

from __future__ import annotations

import os
import select
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import IO, Any, Protocol

POLL_S = 0.01  # without a pidfd
RECHECK_S = 0.1
REAPED_POLL_S = 0.001  # exited, and reaped by another process, which tells us its status (template)


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
    Where the pidfd says the process exited but ``poll()`` does not know it yet (a template's child:
    the template reaps it and sends its status), the pidfd stays readable, so it is dropped and
    ``poll()`` asked every ``REAPED_POLL_S``: selecting on it again would spin a core until then.
    Unthreaded ``drains`` are read in the same ``select`` while it waits, and ``tick`` is called at
    each wake (at least every ``RECHECK_S``).
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    pidfd, poll_s = _pidfd(proc.pid), POLL_S
    try:
        while (code := proc.poll()) is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            step = RECHECK_S if left is None else min(left, RECHECK_S)
            if tick is not None:
                tick()
            if pidfd is None:
                pump_ready(drains, [], min(step, poll_s))
            elif pidfd in pump_ready(drains, [pidfd], step) and proc.poll() is None:
                os.close(pidfd)
                pidfd, poll_s = None, REAPED_POLL_S
        return code
    finally:
        if pidfd is not None:
            os.close(pidfd)


def pump(drains: Sequence[Drain], timeout: float) -> None:
    """Read the drains until each reached EOF or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while (polled := [d for d in drains if d.polled()]) and (left := deadline - time.monotonic()) > 0:
        pump_ready(polled, [], left)
    for drain in drains:  # those handed to a thread: wait for it
        if not drain.polled():
            drain.join(max(0.0, deadline - time.monotonic()))


def pump_ready(drains: Sequence[Drain], others: Sequence[Any], timeout: float) -> list[Any]:
    """One ``select`` on ``others`` (fds, or objects with ``fileno``) and the open unthreaded drains;
    reads a chunk from each ready drain. Returns what was ready, as given."""
    polled = {d.fileno(): d for d in drains if d.polled()}
    ready, _, _ = select.select([*others, *polled], [], [], timeout)
    for fd in ready:
        if fd in polled:
            polled[fd].pump()
    return ready


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
            self._thread = threading.Thread(target=self.read_to_end, name="heavy-drain", daemon=True)
            self._thread.start()

    def read_to_end(self) -> None:
        """Read until EOF, blocking (a thread of its own, or a stream that never blocks)."""
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
