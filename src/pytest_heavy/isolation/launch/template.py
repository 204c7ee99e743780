"""template: a process forked from pytest at session start, which forks a child per module.

Forked before collection imports any test module (and so before any test's OpenMP pool or CUDA
context), the template already holds pytest, the plugins and the conftests in memory: no second
interpreter start and no second import of any of them. Right away, beside the parent's collection,
it builds the children's configuration from the parent's parsed options (``Config.fromdictargs``:
everything it loads is already imported) and starts their session. A package a test module imports
reaches it without a second import where possible: the parent forks a replacement (``snapshot``,
``snapshot.py``) right after that import, while it is still safe to fork; later, it names the package
and the template imports it (``preload.py``), as it imports what ``heavy_preload`` names. Each child
forked from it collects and runs its own module, with torch and the rest already loaded; the parent's
threads and OpenMP pool never reach it.

The template never runs a test and never creates a CUDA context. Before each fork it checks its
own threads by the parent's rule (``threads.py``); a package whose import starts an OpenMP pool makes
it refuse for good, and ``Launchers`` falls back (fork from the parent where that is safe, else spawn).

Protocol over a SOCK_SEQPACKET socket pair (message boundaries kept, fds passed with SCM_RIGHTS).
Nothing is written to disk: a request, with the child's environment, travels over the socket.
parent -> template: {"preload": [names], "explicit": bool}; {"request": size, "capture"} + the child's fds,
then the request's JSON in pieces of at most ``PIECE`` bytes. template -> parent: {"failed": [...]}
after an explicit preload, {"pid"} or {"refused", "final"} per request, {"exit", "returncode"}
whenever a child ends, {"error"} when it cannot configure.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import queue
import select
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from ... import cleanup, wire
from ..threads import fork_quietly, record_thread_baseline, thread_unsafe_reason

if TYPE_CHECKING:  # imported where a child starts: forking the template at session start stays cheap
    from .base import Started, UnitRequest

REPLY_TIMEOUT_S = 300.0  # a reply waits for the template's imports: torch + transformers on a slow disk
EXIT_GRACE_S = 0.3  # for the template to exit on its own, then after SIGTERM
PIECE = 32768  # a request's JSON is sent in pieces: 5,000 node ids do not fit one socket message


class TemplateChild:
    def __init__(self, pid: int, template: TemplateLauncher) -> None:
        self.pid = pid
        self._template = template

    def poll(self) -> int | None:
        return self._template.returncode(self.pid)

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def unavailable_reason() -> str | None:
    """Why the template cannot be forked from this process now, or None."""
    if not hasattr(os, "fork"):
        return "this platform has no fork()"
    if cleanup.cuda_initialized():  # a conftest or plugin created a CUDA context at configure time
        return "CUDA is initialized in the pytest process"
    return None


class TemplateLauncher:
    name = "template"

    def __init__(self, config: pytest.Config, capture_output: bool, preload: tuple[str, ...],
                 env: Callable[[], dict[str, str]], reset: Callable[[], None] | None = None) -> None:
        """Fork the template; ``env`` makes the children's environment, called in the template, and
        ``reset`` (a snapshot's) runs there first."""
        self._config, self._capture, self._explicit, self._env = config, capture_output, preload, env
        self._sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        cleanup.before_fork(config)
        pid = fork_quietly()
        if pid == 0:
            self._sock.close()
            template_process(config, theirs, parent, env, reset)
        theirs.close()
        self.pid = pid
        self._lock = threading.Lock()  # one request at a time: replies come back in order
        self._error: str | None = None
        self._replies: queue.Queue[dict[str, Any]] = queue.Queue()
        self._exits: dict[int, int] = {}
        self._preload_failed: list[str] = []
        self._reported: set[str] = set()  # preload failures named already (by this template or one before)
        self.sent: set[str] = set()  # the packages it holds or was asked to import
        self._retired: list[TemplateLauncher] = []  # templates this one replaced, reaped at close
        self._gone = False
        self._closed = False
        self._configuring = False
        threading.Thread(target=self._read, name="heavy-template", daemon=True).start()
        if preload or reset is not None:  # a snapshot, or packages named up front: needed soon
            self.configure()

    def configure(self) -> None:
        """Have the template configure pytest for the children now (once), and import the packages
        ``heavy_preload`` names, beside the parent's collection: left to the first child, configuring
        cost that child ~0.15 s (plugins' configure, the session's fixture parsing) on the way. The
        template forked at session start is told once a test module has been collected: where that
        module's import of torch makes a snapshot, which replaces it, that CPU would be spent for
        nothing beside the parent's own import of torch."""
        if not self._configuring:
            self._configuring = True
            self.sent.update(self._explicit)
            self._send(preload=list(self._explicit), explicit=True)

    def snapshot(self, reset: Callable[[], None]) -> TemplateLauncher:
        """A template forked from this process now, which holds every package imported so far, to
        replace this one (``snapshot.py``): ``reset`` runs in it first. This one is retired."""
        def forget() -> None:
            self._sock.close()  # the retired template's end: it must see the parent close it
            reset()

        new = TemplateLauncher(self._config, self._capture, self._explicit, self._env, forget)
        new.sent.update(self.sent, (name.partition(".")[0] for name in list(sys.modules)))
        new._preload_failed, new._reported = self._preload_failed, self._reported
        new._retired = [*self._retired, self]
        self.retire()
        return new

    def preload(self, names: tuple[str, ...] | list[str], explicit: bool = False) -> None:
        """Have the template import ``names`` (each once) before it forks the next child."""
        new = [name for name in names if name not in self.sent]
        if not new or self._gone:
            return
        self._configuring = True  # the template configures before it imports them
        self.sent.update(new)
        self._send(preload=new, explicit=explicit)

    def _send(self, **msg: Any) -> None:
        try:
            self._sock.send(json.dumps(msg).encode())
        except OSError:
            pass  # the template is gone: its reader says so at the next request

    def _read(self) -> None:
        while True:
            try:
                data = self._sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            msg = json.loads(data)
            if "failed" in msg:
                self._preload_failed.extend(msg["failed"])
            elif "error" in msg:
                self._error = msg["error"]
            elif "exit" in msg:
                self._exits[msg["exit"]] = msg["returncode"]
            else:
                self._replies.put(msg)
        self._gone = True
        self._error = self._error or "the template process exited"
        self._replies.put({"refused": self._error, "final": True})

    def returncode(self, pid: int) -> int | None:
        if pid in self._exits:
            return self._exits[pid]
        import psutil

        if self._gone and not psutil.pid_exists(pid):
            return -signal.SIGKILL  # its template died: the status is lost
        return None

    def start(self, request: UnitRequest) -> Started:
        from .base import Pipes, RefusedError, release_parent_fds

        if self._gone:
            raise RefusedError(self._error or "the template process exited", final=True)
        body = json.dumps({**request.wire(), "env": request.env}).encode()
        pipes = Pipes(self._capture)
        with self._lock:
            try:
                header = json.dumps({"request": len(body), "capture": self._capture}).encode()
                socket.send_fds(self._sock, [header], pipes.child_fds())
                for at in range(0, len(body), PIECE):
                    self._sock.send(body[at:at + PIECE])
                reply = self._replies.get(timeout=REPLY_TIMEOUT_S)
            except OSError as exc:
                reply = {"refused": f"the template process is gone ({exc})", "final": True}
            except queue.Empty:
                reply = {"refused": f"no answer from the template process in {REPLY_TIMEOUT_S:g}s"}
        if "refused" in reply:
            pipes.close_child_ends()
            for fd in pipes.parent_fds():
                os.close(fd)
            release_parent_fds(*pipes.parent_fds())
            raise RefusedError(reply["refused"], final=reply.get("final", False))
        return pipes.started(TemplateChild(reply["pid"], self))

    def take_preload_failures(self) -> list[str]:
        """The heavy_preload modules the template could not import, the first time they are asked for."""
        failed = [name for name in dict.fromkeys(self._preload_failed) if name not in self._reported]
        self._preload_failed.clear()
        self._reported.update(failed)
        return failed

    def retire(self) -> None:
        """Close our end: the template exits as soon as it is idle (``close`` reaps it later)."""
        try:  # shutdown, not just close: our reader thread is blocked in recv on this socket
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._sock.close()

    def close(self) -> None:
        """End the template: closing our end tells it to exit, which an idle template does at once
        (through ``os._exit``, which coverage's patch saves its data in). One still importing for a
        run that needed no child is not waited for: SIGTERM (its guard, coverage's handler), then
        SIGKILL. Once only: its pid, reaped here, may be another process's afterwards. The templates
        it replaced go the same way."""
        if self._closed:
            return
        self._closed = True
        self.retire()
        for old in self._retired:
            old.close()
        for sig, grace in ((0, EXIT_GRACE_S), (signal.SIGTERM, EXIT_GRACE_S), (signal.SIGKILL, None)):
            try:
                if sig:
                    os.kill(self.pid, sig)
                if _reaped(self.pid, grace):
                    return
            except (ProcessLookupError, ChildProcessError):
                return


def _reaped(pid: int, within: float | None) -> bool:
    """Whether our child ``pid`` exited within ``within`` seconds (None: wait as long as it takes)."""
    if within is None:
        os.waitpid(pid, 0)
        return True
    deadline = time.monotonic() + within
    while not os.waitpid(pid, os.WNOHANG)[0]:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)  # an idle template exits within a millisecond or two
    return True


# --- the template process -------------------------------------------------------------------------


def template_process(parent_config: pytest.Config, sock: socket.socket, parent: int,
                     env: Callable[[], dict[str, str]], reset: Callable[[], None] | None) -> NoReturn:
    """The forked template: detached from the terminal's signals, a snapshot's ``reset`` done (it
    restores the parent's terminal streams from collection's capture: before they are replaced), its
    standard streams on /dev/null (what goes wrong reaches the parent over the socket; what a library
    prints as it exits, coverage's "no data collected" for one, is not the user's business), the
    environment of an isolated child, then serve."""
    code = 0
    try:
        from ... import procs

        os.setsid()  # Ctrl-C in the terminal is the parent's to handle
        procs.guard_child_tree(parent)  # the parent killed (even SIGKILL): the template and its children go
        if reset is not None:
            reset()
        devnull = os.open(os.devnull, os.O_RDWR)
        for target in (0, 1, 2):
            os.dup2(devnull, target)
        os.close(devnull)
        child_env = env()
        os.environ.clear()
        os.environ.update(child_env)
        _drop_parent_log_handlers(parent_config)
        serve(parent_config, sock)
    except BaseException:
        traceback.print_exc()
        code = wire.EXIT_INTERNAL
    finally:
        sys.stderr.flush()
        os._exit(code)  # never the parent's atexit handlers or buffered output


def _drop_parent_log_handlers(parent_config: pytest.Config) -> None:
    """The template is forked inside pytest's session start, while the parent's logging plugin has its
    live-log and ``--log-file`` handlers on the root logger. They are the parent's: each child attaches
    its own (``child.run_logging``), and with the parent's left in place every record a child logs
    would be written twice."""
    plugin = parent_config.pluginmanager.get_plugin("logging-plugin")
    if plugin is None:
        return
    root = logging.getLogger()
    for name in ("log_cli_handler", "log_file_handler"):
        handler = getattr(plugin, name, None)
        if handler in root.handlers:
            root.removeHandler(handler)


class Template:
    """The template's state: the children's configuration and session, made at the first message."""

    def __init__(self, parent_config: pytest.Config, sock: socket.socket) -> None:
        self.sock = sock
        self._parent_config: pytest.Config | None = parent_config
        self.session: pytest.Session | None = None
        self.preloaded: set[str] = set()
        self.poisoned = ""  # why this template can fork no child, for good

    def setup(self) -> pytest.Session:
        """Configure pytest as a child does, once: every plugin and conftest it loads is already imported."""
        from .. import child, session_state
        from .base import child_args, child_options, import_for_children

        if self.session is None:
            assert self._parent_config is not None
            options, args = child_options(self._parent_config), child_args(self._parent_config)
            self._parent_config = None
            child.enable_stack_dumps()
            config = child.configure(options, args)
            self.session = child.start_session(config)
            session_state.register_child(config)  # once here, not in every child: ~1 ms each
            record_thread_baseline()  # as in the parent, at session start: plugins' threads are harmless
            import_for_children()
        return self.session

    def preload(self, names: list[str], explicit: bool) -> None:
        """Import each package; an explicit one that fails (a typo in heavy_preload) is named once by
        the parent. An import that starts an OpenMP pool poisons the template: named, and every later
        request is refused for good (the parent falls back)."""
        self.setup()
        failed = []
        for name in names:
            if name in self.preloaded:
                continue
            self.preloaded.add(name)
            try:
                importlib.import_module(name)
            except Exception as exc:
                if explicit:
                    failed.append(f"{name!r} ({type(exc).__name__}: {exc})")
                continue
            unsafe = None if self.poisoned else thread_unsafe_reason()
            if unsafe:
                self.poisoned = f"importing {name} left {unsafe}"
        if failed:
            _send(self.sock, failed=failed)

    def fork_child(self, request: dict[str, Any], fds: list[int]) -> None:
        from .. import child
        from .base import fork_unsafe_reason

        session = self.setup()
        unsafe = self.poisoned or fork_unsafe_reason()
        if unsafe:
            for fd in fds:
                os.close(fd)
            _send(self.sock, refused=f"the template cannot fork safely: {unsafe}", final=True)
            return
        me = os.getpid()
        pid = fork_quietly()
        if pid == 0:
            code = wire.EXIT_INTERNAL
            try:
                self.sock.close()
                signal.set_wakeup_fd(-1)  # the template's signal plumbing is not the child's
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)  # the child arms its own guard
                config = session.config
                sender, control = child.start_up(config, me, fds, capture=request["capture"],
                                                 env=request["env"])
                code = child.finish(sender, child.run_session(config, request, sender, control, session))
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)
        _send(self.sock, pid=pid)


def _send(sock: socket.socket, **msg: Any) -> None:
    sock.send(json.dumps(msg).encode())


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, exit=pid, returncode=os.waitstatus_to_exitcode(status))


def _receive(sock: socket.socket, size: int) -> dict[str, Any]:
    """The pieces of one request's JSON, sent right after its header."""
    body = b""
    while len(body) < size:
        piece = sock.recv(PIECE)
        if not piece:
            raise EOFError("the parent closed the socket mid-request")
        body += piece
    return dict(json.loads(body))


def serve(parent_config: pytest.Config, sock: socket.socket) -> None:
    """Answer the parent's messages until it closes its end (the session is over)."""
    template = Template(parent_config, sock)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    watched: list[socket.socket | int] = [sock, wake_r]
    while True:
        readable, _, _ = select.select(watched, [], [])
        if wake_r in readable:
            os.read(wake_r, 4096)
        _reap(sock)
        if sock not in readable:
            continue
        msg, fds, _flags, _addr = socket.recv_fds(sock, 65536, 16)
        if not msg:
            return
        header = json.loads(msg)
        try:
            if "preload" in header:
                template.preload(header["preload"], header["explicit"])
            else:
                request = _receive(sock, header["request"])
                template.fork_child({**request, "capture": header["capture"]}, fds)
        except EOFError:
            return
        except Exception as exc:  # configuring failed: no child can start from here
            _send(sock, error=f"the template process could not start: {type(exc).__name__}: {exc}\n"
                              f"{traceback.format_exc()}")
            return
