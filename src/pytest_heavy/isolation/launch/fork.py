"""fork: the pytest parent forks itself; the child runs the parent's already-collected items.

The fastest method (no interpreter start, no import, no collection), and safe only while the
parent has no CUDA context and no thread a child would wait for (``threads.py``): ``Launchers``
checks before every fork and falls back to the forkserver or spawn otherwise.
"""

from __future__ import annotations

import os
import sys
import traceback

import pytest

from ... import procs, wire
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
        os.setsid()
        procs.guard_child_tree(parent)
        for fd in PARENT_FDS - set(pipes.child_fds()):  # a number may be stale and reused by our own ends
            try:
                os.close(fd)
            except OSError:  # closed in the parent already, its number not reused
                pass
        if self._capture:
            child.own_output(self._session.config, pipes.child_fds()[2:])
        else:
            child.silence_terminal(self._session.config)
        os.environ.clear()
        os.environ.update(request.env)
        wire.claim_child_markers()  # the parent's config is configured: not for what the tests start
        child.enable_stack_dumps()
        return child.run_forked(self._session, request.items, wire.Sender(pipes.events_w), pipes.control_r)

    def close(self) -> None:
        pass

