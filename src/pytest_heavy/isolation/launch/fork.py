"""fork: the pytest parent forks itself; the child runs the parent's already-collected items.

The fastest method (no interpreter start, no import, no collection), and safe only while the
parent has no CUDA context and no thread a child would wait for (``threads.py``): ``Launchers``
checks before every fork; ``auto`` prefers the template (``template.py``), which no thread or
OpenMP pool of the parent reaches, and uses this where the template cannot start a child.
"""

from __future__ import annotations

import os
import sys
import traceback

import pytest

from ... import wire
from .. import child
from ..threads import fork_quietly
from .base import PARENT_FDS, Pipes, Started, UnitRequest, import_for_children


class ForkProcess:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self._returncode: int | None = None

    def poll(self) -> int | None:
        if self._returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._returncode = os.waitstatus_to_exitcode(status)
        return self._returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)


class ForkLauncher:
    name = "fork"

    def __init__(self, session: pytest.Session, capture_output: bool) -> None:
        self._session = session
        self._capture = capture_output
        import_for_children()

    def start(self, request: UnitRequest) -> Started:
        pipes = Pipes(self._capture)
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = fork_quietly()
        if pid == 0:  # the child never returns from here
            code = wire.EXIT_INTERNAL
            try:
                code = self._child(pipes, request, parent)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        return pipes.started(ForkProcess(pid))

    def _child(self, pipes: Pipes, request: UnitRequest, parent: int) -> int:
        for fd in PARENT_FDS - set(pipes.child_fds()):  # a number may be stale and reused by our own ends
            try:
                os.close(fd)
            except OSError:  # closed in the parent already, its number not reused
                pass
        sender, control = child.start_up(self._session.config, parent, pipes.child_fds(),
                                         capture=self._capture, env=request.env)
        return child.run_forked(self._session, request.items, sender, control)

    def close(self) -> None:
        pass

