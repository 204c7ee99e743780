"""The parent's terminal in a child: its stdin, stdout and stderr, handed to every child as it starts.

In one process, three things reach the terminal past pytest's capture: a ``breakpoint()`` without
``--pdb`` (pytest suspends its capture and runs pdb on the terminal's stdin and stdout), the
``faulthandler_timeout`` dump (pytest points it at a copy of stderr made at configure time) and,
with ``-s``, everything. A child's own streams lead to the parent's pipes and capture files, or
to /dev/null, so each child gets copies of the parent's three fds (the last three of the fds it is
given) and points those three things at them.

While a child's pdb session runs, the parent prints nothing of that child (its events pause), so
it needs no lock on the terminal; the child first waits for the parent to have written everything
before it (``Event.DEBUGGER``, answered with ``wire.RESUME`` on the control pipe), so that the
session appears where it would in-process.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

import pytest

from ..wire import Event, Sender

COUNT = 3  # the terminal's fds close every child's list: stdin, stdout, stderr
RESUMED = threading.Event()  # set by the child's control-pipe reader when the parent sends wire.RESUME
RESUME_WAIT_S = 10.0  # a parent holding this test's events (a shared GPU) answers late: go on alone


_sources = [0, 1, 2]  # in the parent: where its terminal's stdin, stdout and stderr are (see remember)


def remember(config: pytest.Config) -> None:
    """In the parent, before it starts children: where the terminal is. pytest keeps stdin captured
    between tests (fd 0 is /dev/null then) and restores it from a copy when pdb needs it."""
    _sources[:] = [restored_from(config, fd)[-1] for fd in (0, 1, 2)]


def parent_ends() -> list[int]:
    """In the parent, as it starts a child: copies of its stdin, stdout and stderr for the child
    (the child's to close). A closed one (``<&-``) is /dev/null."""
    ends = []
    for fd in _sources:
        try:
            ends.append(os.dup(fd))
        except OSError:
            ends.append(os.open(os.devnull, os.O_RDWR))
    return ends


def restored_from(config: pytest.Config, fd: int) -> list[int]:
    """``fd`` and, under pytest's fd capture, the copy it restores ``fd`` from when it suspends."""
    capman = config.pluginmanager.get_plugin("capturemanager")
    capture = getattr(getattr(capman, "_global_capturing", None), ("in_", "out", "err")[fd], None)
    saved = getattr(capture, "targetfd_save", None)
    return [fd, saved] if isinstance(saved, int) else [fd]


class Terminal:
    """The child's copies of the parent's stdin, stdout and stderr."""

    def __init__(self, fds: list[int]) -> None:
        self.stdin, self.stdout, self.stderr = fds

    def adopt(self, config: pytest.Config, capture: bool) -> None:
        """Give this child the parent's stdin (where pytest's capture restores fd 0 when pdb
        suspends it), the faulthandler's dump the parent's stderr, and with ``-s`` (no capture)
        stdout and stderr the parent's too."""
        for fd in restored_from(config, 0):
            os.dup2(self.stdin, fd)
        from _pytest.faulthandler import fault_handler_stderr_fd_key

        dump_fd = config.stash.get(fault_handler_stderr_fd_key, None)
        if dump_fd is not None:
            os.dup2(self.stderr, dump_fd)
        if not capture:
            os.dup2(self.stdout, 1)
            os.dup2(self.stderr, 2)


def wait_for_parent(sender: Sender) -> None:
    """Ask the parent to write out what it has of this child (the test's progress line) and wait."""
    RESUMED.clear()
    sender.send(Event.DEBUGGER)
    RESUMED.wait(RESUME_WAIT_S)


class DebuggerOnTerminal:
    """A plugin of the child: while pdb runs (``breakpoint()``, ``pytest.set_trace()``), fd 1 is
    the parent's terminal, as it is in one process once pytest suspends its capture.

    pytest writes the session's header to ``sys.stdout`` before ``pytest_enter_pdb``: still in its
    buffer, or in the file that keeps what tests write past the capture (``drain`` takes it), it
    is written out first."""

    def __init__(self, terminal: Terminal, drain: Callable[[], str], wait: Callable[[], None]) -> None:
        self.terminal = terminal
        self._drain, self._wait = drain, wait
        self._saved: dict[int, int] = {}  # fd -> a copy of what it was before pdb
        self._lock = threading.Lock()

    @pytest.hookimpl(trylast=True)
    def pytest_enter_pdb(self, config: pytest.Config) -> None:
        self._wait()  # the parent has printed every event before this one
        sys.stdout.flush()
        pending = self._drain()
        with self._lock:
            if self._saved:  # a nested session (pdb's 'debug' command): already here
                return
            for fd in restored_from(config, 1):
                self._saved[fd] = os.dup(fd)
                os.dup2(self.terminal.stdout, fd)
        if pending:
            os.write(self.terminal.stdout, pending.encode())

    def pytest_leave_pdb(self, config: pytest.Config) -> None:
        """pdb's 'continue': pytest resumed its capture already (fd 1 may be its capture file now):
        only an fd still on the terminal goes back."""
        sys.stdout.flush()
        terminal = os.fstat(self.terminal.stdout)
        with self._lock:
            for fd, copy in self._saved.items():
                now = os.fstat(fd)
                if (now.st_dev, now.st_ino) == (terminal.st_dev, terminal.st_ino):
                    os.dup2(copy, fd)
                os.close(copy)
            self._saved.clear()
