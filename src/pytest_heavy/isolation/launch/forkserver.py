"""forkserver: one server process, started before collection, forks a child per module.

The server configures pytest once (plugins, conftests, configure hooks), starts one session
(``pytest_sessionstart``: the fixture manager) and imports the modules named in ``heavy_preload``
(torch, transformers...), so each child pays only for collecting and running its own module. It never
runs a test itself and never creates a CUDA context, so its forks stay safe; before each fork it
checks its threads by the parent's rule (``threads.py``: the idle thread ``import torch`` starts is
fine, an OpenMP pool is not), and refuses otherwise.

Protocol over a SOCK_SEQPACKET socket pair (message boundaries kept, fds passed with SCM_RIGHTS):
parent -> server: {"path": request.json} + the child's fds; server -> parent: {"ready"}, then
{"pid"} or {"refused"} per request, and {"exit", "returncode"} whenever a child ends.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import queue
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import traceback
from typing import Any

import psutil
import pytest

from ... import draining, procs, wire
from .. import child
from ..threads import fork_quietly, record_thread_baseline
from .base import (
    Pipes,
    RefusedError,
    Started,
    UnitRequest,
    child_args,
    child_options,
    fork_unsafe_reason,
    import_for_children,
    release_parent_fds,
)

READY_TIMEOUT_S = 300.0  # preloading torch + transformers on a slow disk can take a while
REPLY_TIMEOUT_S = 30.0


class ServerChild:
    def __init__(self, pid: int, server: ForkserverLauncher) -> None:
        self.pid = pid
        self._server = server

    def poll(self) -> int | None:
        return self._server.returncode(self.pid)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


class ForkserverLauncher:
    name = "forkserver"

    def __init__(self, config: pytest.Config, capture_output: bool, preload: tuple[str, ...],
                 env: dict[str, str]) -> None:
        self._capture = capture_output
        self._tmp = tempfile.TemporaryDirectory(prefix="pytest-heavy-fs-")
        payload = os.path.join(self._tmp.name, "server.pickle")
        with open(payload, "wb") as fh:
            pickle.dump({"options": child_options(config), "args": child_args(config),
                         "preload": list(preload)}, fh)
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._popen = subprocess.Popen(
            [sys.executable, "-m", "pytest_heavy.isolation.launch.forkserver", payload],
            cwd=str(config.invocation_params.dir), env={**env, wire.SERVER_FD_ENV: str(theirs.fileno())},
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE, start_new_session=True,
        )
        theirs.close()
        self._stderr = draining.Drain(self._popen.stderr)  # type: ignore[arg-type]
        self._ready = threading.Event()
        self._error: str | None = None
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._exits: dict[int, int] = {}
        self._preload_failed: list[str] = []  # set once the server is ready; handed out once
        self._gone = False
        self._count = 0
        threading.Thread(target=self._read, name="heavy-forkserver", daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            msg = json.loads(data)
            if "ready" in msg:
                self._preload_failed = msg.get("failed", [])
                self._ready.set()
            elif "error" in msg:
                self._error = msg["error"]
                self._ready.set()
            elif "exit" in msg:
                self._exits[msg["exit"]] = msg["returncode"]
            else:
                self._replies.put(msg)
        self._gone = True
        self._error = self._error or "the forkserver exited"
        self._ready.set()
        self._replies.put({"refused": self._error})

    def returncode(self, pid: int) -> int | None:
        if pid in self._exits:
            return self._exits[pid]
        if self._gone and not psutil.pid_exists(pid):
            return -signal.SIGKILL  # its server died: the status is lost
        return None

    def start(self, request: UnitRequest) -> Started:
        if not self._ready.wait(READY_TIMEOUT_S):
            raise RefusedError(f"the forkserver was not ready after {READY_TIMEOUT_S:g}s")
        if self._error:
            raise RefusedError(f"{self._error}\n{self._stderr.tail(20)}", final=True)
        self._count += 1
        path = os.path.join(self._tmp.name, f"request-{self._count}.json")
        with open(path, "w") as fh:
            json.dump({**request.wire(), "env": request.env, "capture": self._capture}, fh)
        pipes = Pipes(self._capture)
        terminal = [] if self._capture else [os.dup(1), os.dup(2)]  # -s: the child writes to our terminal
        socket.send_fds(self._sock, [json.dumps({"path": path}).encode()], pipes.child_fds() + terminal)
        for fd in terminal:
            os.close(fd)
        try:
            reply = self._replies.get(timeout=REPLY_TIMEOUT_S)
        except queue.Empty:
            reply = {"refused": f"no answer from the forkserver in {REPLY_TIMEOUT_S:g}s"}
        if "refused" in reply:
            pipes.close_child_ends()
            for fd in pipes.parent_fds():
                os.close(fd)
            release_parent_fds(*pipes.parent_fds())
            raise RefusedError(reply["refused"])
        return pipes.started(ServerChild(reply["pid"], self))

    def take_preload_failures(self) -> list[str]:
        """The heavy_preload modules the server could not import, the first time they are asked for."""
        failed, self._preload_failed = self._preload_failed, []
        return failed

    def close(self) -> None:
        preloading = not self._ready.is_set()  # first: closing the socket wakes the reader, which sets it
        try:  # shutdown, not just close: our reader thread is blocked in recv on this socket
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()
        if preloading:  # a run that needed no child must not wait for the server's imports
            self._popen.kill()
        try:
            self._popen.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._popen.kill()
            self._popen.wait()
        self._tmp.cleanup()


# --- the server process ---------------------------------------------------------------------------


def _send(sock: socket.socket, **msg: Any) -> None:
    sock.send(json.dumps(msg).encode())


def _child(session: pytest.Session, sock: socket.socket, request: dict[str, Any], fds: list[int],
           server: int) -> int:
    config = session.config
    sock.close()
    signal.set_wakeup_fd(-1)  # the server's signal plumbing is not the child's
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    procs.guard_child_tree(server)
    events_fd, control_fd, *output = fds
    if request["capture"]:
        child.own_output(config, output)
    else:  # -s: our terminal, not the server's (which has none)
        for fd, target in zip(output, (1, 2), strict=True):
            os.dup2(fd, target)
            os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    wire.claim_child_markers()  # the server's config is configured: not for what the tests start
    child.enable_stack_dumps()
    sender = wire.Sender(events_fd)
    return child.finish(sender, child.run_session(config, request, sender, control_fd, session))


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, exit=pid, returncode=os.waitstatus_to_exitcode(status))


def preload(names: list[str]) -> list[str]:
    """Import each module; one that fails (a typo in heavy_preload) is named, once, by the parent,
    and the server goes on without it: preloading only saves time, the children import what they use."""
    failed = []
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:
            failed.append(f"{name!r} ({type(exc).__name__}: {exc})")
    return failed


def serve(sock: socket.socket, payload: dict[str, Any]) -> None:
    child.enable_stack_dumps()
    try:
        config = child.configure(payload["options"], payload["args"])
        session = child.start_session(config)
        record_thread_baseline()  # as in the parent, at session start: plugins' threads are harmless
        failed = preload(payload["preload"])
        import_for_children()
    except BaseException as exc:
        traceback.print_exc()
        _send(sock, error=f"the forkserver could not start: {type(exc).__name__}: {exc}")
        return
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    _send(sock, ready=True, preloaded=payload["preload"], failed=failed)
    watched: list[socket.socket | int] = [sock, wake_r]
    while True:
        readable, _, _ = select.select(watched, [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
        _reap(sock)
        if sock not in readable:
            continue
        msg, fds, _flags, _addr = socket.recv_fds(sock, 65536, 8)
        if not msg:
            return  # the parent closed its end: the session is over
        with open(json.loads(msg)["path"]) as fh:
            request = json.load(fh)
        unsafe = fork_unsafe_reason()
        if unsafe:
            for fd in fds:
                os.close(fd)
            _send(sock, refused=f"the forkserver cannot fork safely: {unsafe}")
            continue
        server = os.getpid()
        pid = fork_quietly()
        if pid == 0:
            code = wire.EXIT_INTERNAL
            try:
                code = _child(session, sock, request, fds, server)
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)
        _send(sock, pid=pid)


def main() -> None:
    sock = socket.socket(fileno=int(os.environ.pop(wire.SERVER_FD_ENV)))
    with open(sys.argv[1], "rb") as fh:
        payload = pickle.load(fh)
    try:
        serve(sock, payload)
    finally:
        sock.close()
    # The parent closed its end: the session is over. Skip the interpreter's teardown, which with torch
    # loaded takes about a second that the parent, waiting for this process to exit, would add to the run.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
