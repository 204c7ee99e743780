"""The child side of isolation: run exactly the node ids the parent chose and stream every report back.

Kept self-contained (pytest and ``wire`` only) because it runs in three kinds of process: a fresh
interpreter (spawn), a fork of the template process (configured once, so a module costs only its own
collection), and a fork of the pytest parent (nothing to collect: the parent's items are reused).

The child never writes terminal output, junit or coverage reports: the parent does, from the
reports it receives. It keeps its terminal reporter all the same, writing to a null sink: pytest's
assertion explanations, ``--setup-show`` and plugins such as pytest-timeout ask for the terminal
writer, and a child without one loses every assertion message. The child never re-applies
``-k``/``-m``/``--lf``: the parent resolved them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import fcntl
import functools
import io
import logging
import os
import pathlib
import pickle
import sys
import tempfile
import threading
import traceback
import warnings
from collections.abc import Generator, Mapping
from typing import Any

import psutil
import pytest

from .. import procs
from ..wire import (
    EXIT_PARENT_GONE,
    FDS_ENV,
    GO,
    LIVE_LOG_KEY,
    OUTSIDE_KEY,
    PAYLOAD_ENV,
    RESUME,
    STACK_SIGNAL,
    STOP,
    Event,
    Sender,
    SpawnPayload,
    claim_child_markers,
    serialize_warning,
)
from . import junit, longrepr, params, session_state, terminal

INTERRUPTS = (KeyboardInterrupt, pytest.exit.Exception)  # a test ends the whole session, as in-process


class Forwarder:
    """Hooks registered in the child: send reports, warnings and collection problems to the parent."""

    def __init__(self, sender: Sender, config: pytest.Config, nodeids: list[str] | None) -> None:
        self.sender = sender
        self.config = config
        self.nodeids = nodeids
        self.failed = 0
        # pytest_warning_recorded is historic: registering replays every earlier call (config-time
        # warnings, and in a fork the warnings the parent re-emitted). Only live ones are ours.
        self.live = False
        self.live_log = LiveLogTap.install(config)
        self.outside = OutsideOutput.install(config)
        self.renamed: dict[str, str] = {}  # child's node id -> the parent's (see params.rematch)
        self.junit = junit.install(config)
        self.teststatus = mute_terminal_progress(config)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Keep exactly the parent's node ids, in the parent's order; name any this child lacks."""
        if self.nodeids is None:
            return
        by_id, self.renamed = params.rematch(items)  # the parent's parameters under the parent's ids
        items[:] = [by_id[n] for n in self.nodeids if n in by_id]
        missing = [n for n in self.nodeids if n not in by_id]
        if missing:
            self.sender.send(Event.MISSING, nodeids=missing)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:
            self.sender.send(Event.COLLECT_ERROR, nodeid=report.nodeid, longrepr=str(report.longrepr))

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        if _terminal_file is not None:  # it keeps what the running test's plugins print, for a crash
            _terminal_file.flush()
            if os.lseek(_terminal_file.fileno(), 0, os.SEEK_END):  # emptied only when written to
                os.ftruncate(_terminal_file.fileno(), 0)
        self.sender.send(Event.LOGSTART, nodeid=self.renamed.get(nodeid, nodeid), location=location)

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Sent last, as the other plugins left it: pytest's ``pytest_report_teststatus`` (called by
        the terminal reporter) fails a passed test that holds failed subtests."""
        self.failed += report.failed
        if self.teststatus:  # what the muted terminal reporter asked: a hook may change the report
            self.config.hook.pytest_report_teststatus(report=report, config=self.config)
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        params.relabel(data, self.renamed)
        longrepr.mark(report, data)
        if self.outside is not None and (out := self.outside.take()):
            data[OUTSIDE_KEY] = out
        if self.live_log is not None and (text := self.live_log.take()):
            data[LIVE_LOG_KEY] = text
        if self.junit is not None and (recorded := self.junit.take()):
            data[junit.TAKE_KEY] = recorded
        self.sender.send(Event.REPORT, data=data)

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        self.sender.send(Event.LOGFINISH, nodeid=self.renamed.get(nodeid, nodeid), location=location)

    def pytest_warning_recorded(self, warning_message: warnings.WarningMessage, when: str, nodeid: str,
                                location: tuple[str, int, str] | None) -> None:
        """A test's warning, or a collection's. Not a config-time one (an unknown ini key, a conftest's
        import): the parent, configured from the same files and options, recorded it already, and a
        spawned or template child that collects its module validates the ini again."""
        if not self.live or when == "config":
            return
        self.sender.send(Event.WARNING, when=when, nodeid=self.renamed.get(nodeid, nodeid), location=location,
                         message=serialize_warning(warning_message))


class OutsideOutput:
    """What the child's tests write to stdout past pytest's capture: ``capsys.disabled()``,
    ``--capture=tee-sys``'s echo, fd writes under ``--capture=sys``. In one process that reaches
    the terminal; here stdout leads to the parent, which only keeps its tail for crash messages.
    So stdout (and the fd pytest's capture restores it to between tests) goes to a file of our own,
    and what a test wrote rides on its next report, for the parent to write to its terminal just
    before replaying that report, where an in-process run would have printed it."""

    def __init__(self, file: Any) -> None:
        self._file = file
        self._read = 0

    @classmethod
    def install(cls, config: pytest.Config) -> OutsideOutput | None:
        """Divert this child's stdout; None with ``-s`` (the terminal has it already)."""
        capman = config.pluginmanager.get_plugin("capturemanager")
        if capman is None or config.getoption("capture", "fd") == "no":
            return None
        file = tempfile.TemporaryFile()  # noqa: SIM115  (lives as long as this process)
        sys.stdout.flush()
        out = getattr(getattr(capman, "_global_capturing", None), "out", None)
        saved = getattr(out, "targetfd_save", None)
        for fd in (1, saved) if isinstance(saved, int) else (1,):
            os.dup2(file.fileno(), fd)
        return cls(file)

    def take(self) -> str:
        """What was written since the last take."""
        for stream in (sys.__stdout__, sys.stdout):
            if stream is not None:
                stream.flush()
        size = os.fstat(self._file.fileno()).st_size
        if size <= self._read:
            return ""
        data = os.pread(self._file.fileno(), size - self._read, self._read)
        self._read = size
        return data.decode("utf-8", "replace")


class LiveLogTap:
    """Where a child's live logging (``log_cli``) writes instead of its silenced terminal: the text
    of each phase, section header included, rides on the report that follows it, and the parent
    prints it just before replaying that report, where an in-process run prints it."""

    def __init__(self, config: pytest.Config) -> None:
        from _pytest.config import create_terminal_writer

        self._buffer = io.StringIO()
        self._tw = create_terminal_writer(config, self._buffer)
        reporter = config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:  # the parent's colour choice and width travel in the options
            self._tw.hasmarkup, self._tw.fullwidth = reporter._tw.hasmarkup, reporter._tw.fullwidth

    @classmethod
    def install(cls, config: pytest.Config) -> LiveLogTap | None:
        """Point the live-logging handler at a new tap; None when live logging is off."""
        from _pytest.logging import _LiveLoggingStreamHandler

        handler = getattr(config.pluginmanager.get_plugin("logging-plugin"), "log_cli_handler", None)
        if not isinstance(handler, _LiveLoggingStreamHandler):
            return None
        tap = cls(config)
        handler.stream = tap  # type: ignore[assignment]
        return tap

    # the parts of TerminalReporter that the live-logging handler uses
    def write(self, content: str, *, flush: bool = False, **markup: bool) -> None:
        self._tw.write(content, **markup)

    def section(self, title: str, sep: str = "=", **kw: bool) -> None:
        self._tw.sep(sep, title, **kw)

    def flush(self) -> None:
        pass

    def take(self) -> str:
        text = self._buffer.getvalue()
        self._buffer.seek(0)
        self._buffer.truncate()
        return text


def register_forwarder(forwarder: Forwarder) -> Forwarder:
    forwarder.config.pluginmanager.register(forwarder, "heavy-forwarder")
    forwarder.live = True
    session_state.register_child(forwarder.config)
    if _terminal is not None:
        outside = forwarder.outside
        debugger = terminal.DebuggerOnTerminal(_terminal, outside.take if outside else str,
                                               functools.partial(terminal.wait_for_parent, forwarder.sender))
        forwarder.config.pluginmanager.register(debugger, "heavy-debugger")
    return forwarder


class Go:
    """A staged child's wait, once collected, for the parent's word to run (``wire.go``)."""

    def __init__(self) -> None:
        self._said = threading.Event()
        self.maxfail: int | None = None  # None: told to stop instead

    def release(self, maxfail: int | None) -> None:
        if not self._said.is_set():
            self.maxfail = maxfail
            self._said.set()

    def wait(self) -> int | None:
        self._said.wait()
        return self.maxfail


def watch_control(fd: int, session: pytest.Session, go: Go | None = None) -> None:
    """Read the parent's control pipe: 'stop' ends the run after the current test (a staged child's
    before its first); 'go' lets a staged child run; EOF means the parent is gone (even SIGKILLed),
    and a child nobody listens to has no reason to go on: it kills what its tests started, which
    nobody else would, and exits."""

    def run() -> None:
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            while data := pipe.read(64):
                if STOP in data:
                    session.shouldstop = "stopped by pytest-heavy: the parent session is stopping"
                    if go is not None:
                        go.release(None)
                if RESUME in data:
                    terminal.RESUMED.set()
                if go is not None and (said := GO.search(data)):
                    go.release(int(said.group(1)))
        procs.kill_descendants()
        os._exit(EXIT_PARENT_GONE)

    threading.Thread(target=run, name="heavy-control", daemon=True).start()


def mute_conftest_report_hooks(config: pytest.Config) -> None:
    """A conftest's ``pytest_runtest_logreport`` runs in the parent, where every report is replayed:
    run in the child as well, each report would reach it twice (a hook that counts, writes or adds
    to the report would do it twice). Plugins' hooks stay: pytest's own (counting toward
    ``--maxfail``, the terminal's outcome words) and ours are needed here. (A conftest's
    logstart/logfinish hooks still run on both sides: what they write to stderr between tests is
    part of a crashed child's message.)"""
    for name in ("pytest_runtest_logreport",):
        for impl in getattr(config.hook, name).get_hookimpls():
            path = getattr(impl.plugin, "__file__", None) or ""
            if os.path.basename(path) == "conftest.py" and not (impl.hookwrapper or impl.wrapper):
                impl.function = _ignore


def _ignore(*args: object) -> None:
    return None


TERMINAL_PER_TEST = ("pytest_runtest_logstart", "pytest_runtest_logreport", "pytest_runtest_logfinish")


def mute_terminal_progress(config: pytest.Config) -> bool:
    """The terminal reporter's per-test hooks (progress letters, ``-v`` lines, its stats), which in a
    child write only into the silenced sink while the parent writes the real ones: ~7% of a child's
    time in a module of quick tests. The one thing they did that matters, asking
    ``pytest_report_teststatus`` of each report (pytest's subtests fail a passed test there), the
    forwarder asks itself: True when it must."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return False
    for name in TERMINAL_PER_TEST:
        for impl in getattr(config.hook, name).get_hookimpls():
            if impl.plugin is reporter or type(impl.plugin).__name__ == "TerminalProgressPlugin":
                impl.function = _ignore
    return True


def run_items(session: pytest.Session, items: list[pytest.Item]) -> None:
    """pytest's own run loop over ``items``: nextitem keeps module fixtures alive across tests."""
    mute_conftest_report_hooks(session.config)
    for i, item in enumerate(items):
        nextitem = items[i + 1] if i + 1 < len(items) else None
        item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
        if session.shouldfail or session.shouldstop:
            break


BASETEMP_ENV = "PYTEST_HEAVY_BASETEMP"  # the parent's tmp_path base directory, shared by its children


def share_basetemp(config: pytest.Config) -> None:
    """Make tmp_path directories in the parent's base directory: one tree per session, numbered
    as in-process, its retention applied once, by the parent. Taken as given (``--basetemp``), so
    that this child neither empties it when it starts nor removes it when its session ends."""
    path = os.environ.get(BASETEMP_ENV)
    factory = getattr(config, "_tmp_path_factory", None)
    if path and factory is not None:
        factory._basetemp = factory._given_basetemp = pathlib.Path(path)


def run_logging(config: pytest.Config) -> contextlib.ExitStack:
    """What pytest's logging plugin does around its own run loop, which a spawned or template child
    replaces: attach the live-log (``log_cli``) and ``--log-file`` handlers. (A fork of the parent
    runs inside the parent's loop: its handlers are attached already.)"""
    from _pytest.logging import catching_logs

    plugin = config.pluginmanager.get_plugin("logging-plugin")
    stack = contextlib.ExitStack()
    if plugin is not None:
        stack.enter_context(catching_logs(plugin.log_cli_handler, level=plugin.log_cli_level))
        stack.enter_context(catching_logs(plugin.log_file_handler, level=plugin.log_file_level))
    return stack


def append_to_log_file(config: pytest.Config, handler: logging.FileHandler | None = None) -> None:
    """``--log-file`` is one file for the session: the parent created it (emptying it), and every
    process appends to it from then on. pytest opens it at configure with mode ``w``, which in a
    child would empty it again: a child is configured with ``os.devnull`` (see ``configure``) and
    pointed at the parent's file here; the parent's own handler is reopened to append, so its writes
    land after the children's instead of over them."""
    plugin = config.pluginmanager.get_plugin("logging-plugin")
    handler = handler or getattr(plugin, "log_file_handler", None)
    path = config.getoption("log_file", None)
    if handler is None or not path or path == os.devnull:
        return
    handler.baseFilename, handler.mode = os.path.abspath(path), "a"
    old = handler.setStream(handler._open())
    if old is not None:
        old.close()


def configure(options: dict[str, Any], args: list[str]) -> pytest.Config:
    """A configured pytest ready to run sessions: plugins loaded, conftests imported, configure hooks run.

    ``Config.fromdictargs`` is pytest's constructor for subprocesses (xdist's workers use it):
    the parent's resolved options, no second pass over addopts.
    """
    # A template forked from the parent inherits pytest's stand-in for sys.stdin (stdin stays captured
    # between tests): the capture configured here would restore it for pdb instead of the real one.
    sys.stdin = sys.__stdin__
    late = options.pop(LATE_OPTIONS, {})
    log_file = options.get("log_file")  # the parent's, absolute: see append_to_log_file
    config = pytest.Config.fromdictargs({**options, "log_file": os.devnull} if log_file else options, args)
    for key, blob in late.items():  # plugins are loaded and marked for rewriting by now
        setattr(config.option, key, pickle.loads(blob))
    invoked_as_parent(config)
    XdistIdentity.register(config)
    config._do_configure()  # what pytest's wrap_session does first; done once, shared by forked children
    if log_file:
        config.option.log_file = log_file
        append_to_log_file(config)
    silence_terminal(config)
    return config


class XdistIdentity:
    """pytest-xdist's ``worker_id`` and ``testrun_uid`` fixtures in a spawned or template child of an
    xdist worker: xdist reads them from the worker's ``workerinput``, which only a worker's config
    has, so a child that configured pytest afresh answered 'master' and a uid of its own. Tests use
    them to pick ports, databases and scratch names per worker; the worker's environment (inherited)
    holds both. A fork of the worker keeps the worker's config and needs none of this."""

    WORKER, UID = "PYTEST_XDIST_WORKER", "PYTEST_XDIST_TESTRUNUID"  # set by xdist in each worker

    @classmethod
    def register(cls, config: pytest.Config) -> None:
        xdist_worker = all(os.environ.get(name) for name in (cls.WORKER, cls.UID))
        if xdist_worker and config.pluginmanager.has_plugin("xdist"):
            config.pluginmanager.register(cls(), "heavy-xdist-identity")  # after xdist's: these win

    @pytest.fixture(scope="session")
    def worker_id(self) -> str:
        return os.environ[self.WORKER]

    @pytest.fixture(scope="session")
    def testrun_uid(self) -> str:
        return os.environ[self.UID]


INVOCATION_OPTION = "heavy_invocation_args"  # the parent's command-line arguments, on the child's options
LATE_OPTIONS = "heavy_late_options"  # a spawned child's options set once configured (spawn.late_options)


def invoked_as_parent(config: pytest.Config) -> None:
    """``config.invocation_params.args`` as the parent's, before any plugin's configure hook reads them:
    a test sees the command line the user typed, not the arguments that made this child's config."""
    args = getattr(config.option, INVOCATION_OPTION, None)
    if args is not None:
        config.invocation_params = dataclasses.replace(config.invocation_params, args=tuple(args))


def silence_terminal(config: pytest.Config, fd: int | None = None) -> None:
    """Keep the terminal reporter (every plugin may ask for it) but send what it writes away from
    the terminal: to the file ``fd``, emptied as each test starts, which the parent reads when the
    child dies mid-test (pytest-timeout's thread method prints its stacks there, then exits), or
    nowhere.

    The writer keeps the markup and width the child was configured with (the parent's colour
    choice travels in the options), so explanations built with it read as they would in-process.
    """
    from _pytest.config import create_terminal_writer

    global _terminal_file
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    close_null_sink()
    if fd is None:
        file = _null_sink[0] = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
    else:
        # appending: writes follow the truncation at each test start
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)
        file = _terminal_file = os.fdopen(fd, "a", buffering=1, encoding="utf-8")
    old = reporter._tw
    sink = create_terminal_writer(config, file)
    sink.hasmarkup, sink.code_highlight, sink.fullwidth = old.hasmarkup, old.code_highlight, old.fullwidth
    reporter._tw = sink


def close_null_sink() -> None:
    """Close the null sink an earlier ``silence_terminal`` opened (a spawned or template child is
    silenced at configure time, then again onto its terminal file): left to the garbage collector,
    it is a ResourceWarning, which ``-W error`` turns into the next test's error."""
    if _null_sink[0] is not None:
        _null_sink[0].close()
        _null_sink[0] = None


def start_session(config: pytest.Config) -> pytest.Session:
    """A session whose ``pytest_sessionstart`` hooks have run. The fixture manager built there parses
    every plugin's fixtures, about half of what a template child would cost, so the template starts
    the session once and each fork inherits it, as a fork of the parent inherits the parent's. Which
    files it collects is decided later, by ``config.args``."""
    session = pytest.Session.from_config(config)
    session.exitstatus = pytest.ExitCode.OK
    config.hook.pytest_sessionstart(session=session)
    return session


def run_session(config: pytest.Config, request: Mapping[str, Any], sender: Sender, control_fd: int,
                session: pytest.Session | None = None) -> int:
    """Collect the unit's files (in ``session``, started here unless given) and run exactly the
    requested node ids; a staged child runs them once the parent says ``go``."""
    register_forwarder(Forwarder(sender, config, request["nodeids"]))
    config.option.maxfail = request["maxfail"]
    config.args = list(request["paths"])
    share_basetemp(config)
    if session is None:
        session = start_session(config)
    go = Go() if request["staged"] else None
    watch_control(control_fd, session, go)
    try:
        config.hook.pytest_collection(session=session)
        if go is not None and (maxfail := go.wait()) is not None:
            config.option.maxfail = maxfail  # failures the children before it left
        with run_logging(config):
            run_items(session, session.items if not session.shouldstop else [])
        if session.shouldfail:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    except (session.Failed, session.Interrupted):  # before INTERRUPTS: Interrupted is a KeyboardInterrupt
        session.exitstatus = pytest.ExitCode.INTERRUPTED
    except INTERRUPTS as exc:
        session.exitstatus = interrupted(sender, exc)
    except BaseException:
        traceback.print_exc()
        session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
    if session.testsfailed and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    with without_terminal_summary(config):
        config.hook.pytest_sessionfinish(session=session, exitstatus=session.exitstatus)
    send_state(sender, session)
    return int(session.exitstatus)


@contextlib.contextmanager
def without_terminal_summary(config: pytest.Config) -> Generator[None]:
    """End the child's session without ``pytest_terminal_summary``: the parent's summary covers
    every test, as in one process, where each plugin's summary runs once. A child's would print
    into the null sink at a real price: hypothesis's imports the whole of hypothesis (and, through
    its entry points, trio), ~0.2-0.4 s in every child of a suite that never uses it."""
    name, hook = "pytest_terminal_summary", config.hook
    original = getattr(hook, name)
    setattr(hook, name, config.pluginmanager.subset_hook_caller(name, config.pluginmanager.get_plugins()))
    try:
        yield
    finally:
        setattr(hook, name, original)


def send_state(sender: Sender, session: pytest.Session) -> None:
    """Plugins' session-level state, for the parent to merge (``session_state.py``)."""
    try:
        state = session_state.gather(session)
    except Exception:  # a plugin's failure here must not lose the child's 'done'
        traceback.print_exc()
        return
    if state:
        sender.send(Event.STATE, state=state)


def run_forked(session: pytest.Session, items: list[pytest.Item], sender: Sender, control_fd: int) -> int:
    """In a fork of the parent: run its already-collected items with a fresh setup stack.

    Fixtures the parent already set up are inherited (copy-on-write) and left alone; whatever this
    child sets up, it tears down. The terminal reporter stays, silenced (by the launcher): the
    parent prints.
    """
    from _pytest.runner import SetupState

    config = session.config
    forwarder = register_forwarder(Forwarder(sender, config, None))
    session._setupstate = SetupState()
    watch_control(control_fd, session)
    exitstatus: int = pytest.ExitCode.OK
    try:
        try:
            run_items(session, items)
        except (session.Failed, session.Interrupted):  # pytest's own stops are not a test's interrupt
            raise
        except INTERRUPTS as exc:
            exitstatus = interrupted(sender, exc)
        session._setupstate.teardown_exact(None)
        send_state(sender, session)
        if forwarder.failed and exitstatus == pytest.ExitCode.OK:
            exitstatus = pytest.ExitCode.TESTS_FAILED
    except BaseException:
        traceback.print_exc()
        exitstatus = pytest.ExitCode.INTERNAL_ERROR
    return finish(sender, exitstatus)


def interrupted(sender: Sender, exc: BaseException) -> int:
    """A test called ``pytest.exit()`` or raised KeyboardInterrupt: the parent ends its session the
    same way (``!!! Exit: reason !!!``, exit code 2 or the one given) and starts nothing more."""
    returncode = getattr(exc, "returncode", None)
    tb = traceback.extract_tb(exc.__traceback__)
    where = f"{tb[-1].filename}:{tb[-1].lineno}" if tb else ""
    sender.send(Event.INTERRUPT, kind=type(exc).__name__, reason=str(getattr(exc, "msg", exc)),
                returncode=returncode, where=where)
    return int(returncode if returncode is not None else pytest.ExitCode.INTERRUPTED)


def own_output(config: pytest.Config, fds: list[int]) -> None:
    """Make this child's output its own: ``fds`` are its stdout and stderr pipes (fork and template
    only), then the three capture files the parent can read (stdout, stderr, terminal).

    A forked child inherits pytest's global fd capture from its parent (or the template): its
    temporary files and the saved terminal fds it restores between tests. Shared, they would mix
    siblings' output into each other's reports and leave a dead child's output to the next one.
    The capture files the parent handed over replace them (same fd numbers, so pytest's objects
    are untouched), and a test that dies mid-run still has its output read by the parent.
    """
    *pipes, cap_out, cap_err, terminal = fds
    silence_terminal(config, terminal)
    capman = config.pluginmanager.get_plugin("capturemanager")
    capturing = getattr(capman, "_global_capturing", None)
    for name, fd, pipe, captured in (("out", 1, pipes[:1], cap_out), ("err", 2, pipes[1:], cap_err)):
        capture = getattr(capturing, name, None)
        saved = getattr(capture, "targetfd_save", None)
        tmpfile = getattr(capture, "tmpfile", None)
        if pipe:
            if isinstance(saved, int):  # where capture sends output between tests
                os.dup2(pipe[0], saved)
            os.dup2(pipe[0], fd)
            os.close(pipe[0])
        if isinstance(saved, int) and tmpfile is not None:  # fd capture: a file on disk, shared if inherited
            os.dup2(captured, tmpfile.fileno())
        os.close(captured)


_dump_file: Any = None
_terminal: terminal.Terminal | None = None  # the parent's terminal, once start_up has taken it
_terminal_file: Any = None  # where the silenced terminal reporter writes, when the parent reads it
_null_sink: list[Any] = [None]  # the devnull file a silenced terminal reporter writes to, if any


def finish(sender: Sender, exitstatus: int) -> int:
    """Kill what the tests left running and name it to the parent, then say 'done'.

    This child is the subreaper of everything its tests started, so it sees every leftover, also a
    daemon that double-forked into a session of its own a moment ago; a few rounds catch what a
    dying leftover forked meanwhile. The parent still kills what it saw of a child that crashed.
    """
    stop_multiprocessing_helpers()
    sender.send(Event.LEFTOVERS, killed=procs.kill_descendants())
    sender.send(Event.DONE, exitstatus=int(exitstatus))
    return int(exitstatus)


HELPER_GRACE_S = 2.0  # how long multiprocessing's helpers get to exit once told to, before the kill


def stop_multiprocessing_helpers() -> None:
    """Let the helpers multiprocessing started in this child exit on their own, as they do once it is
    gone: its resource tracker and forkserver (a spawn/forkserver Pool, ProcessPoolExecutor,
    DataLoader) each watch a pipe from this process and exit at its EOF. Closing our end now lets
    them go within ``HELPER_GRACE_S``; only one still alive after it is a leftover. A forked child
    leaves its parent's helpers alone: only helpers whose parent is this process are ours."""
    helpers = []  # (owner object, fd attribute, pid attribute)
    if (tracker := sys.modules.get("multiprocessing.resource_tracker")) is not None:
        helpers.append((tracker._resource_tracker, "_fd", "_pid"))
    if (server := sys.modules.get("multiprocessing.forkserver")) is not None:
        helpers.append((server._forkserver, "_forkserver_alive_fd", "_forkserver_pid"))
    waiting = []
    for owner, fd_name, pid_name in helpers:
        fd, pid = getattr(owner, fd_name, None), getattr(owner, pid_name, None)
        if fd is None or pid is None:
            continue
        try:
            helper = psutil.Process(pid)
            if helper.ppid() != os.getpid():
                continue
            os.close(fd)
        except (psutil.Error, OSError):
            continue
        setattr(owner, fd_name, None)
        setattr(owner, pid_name, None)
        waiting.append(helper)
    psutil.wait_procs(waiting, timeout=HELPER_GRACE_S)  # reaps them too: no zombie counts as a leftover


def enable_stack_dumps() -> None:
    """Crash tracebacks and on-demand stack dumps go to a copy of stderr as it is now.

    A copy, because during a test pytest's fd capture points fd 2 at a temporary file that dies
    with the process: the dump the parent asks for on timeout must reach the parent's pipe.
    """
    global _dump_file
    replaced, _dump_file = _dump_file, os.fdopen(os.dup(2), "w")
    faulthandler.enable(file=_dump_file)
    faulthandler.register(STACK_SIGNAL, file=_dump_file, all_threads=True)
    if replaced is not None:  # the template's, in each child it forks: unclosed, -W error fails a test
        replaced.close()


def start_up(config: pytest.Config, parent: int, fds: list[int], *, capture: bool,
             env: dict[str, str] | None) -> tuple[Sender, int]:
    """The one start-up sequence of every child (spawned, forked from the parent or from the template),
    before it runs tests. Returns the event sender and the control pipe's fd.

    ``fds``: events, control, then with ``capture`` the child's output (stdout and stderr pipes where
    the child was forked, none where spawn gave them at exec) and its three capture files, and last
    the parent's terminal (stdin, stdout, stderr: ``terminal.py``).
    ``env`` replaces the environment of a forked child (spawn got its own at exec).
    """
    if os.getsid(0) != os.getpid():  # spawn starts a session of its own already; a fork does not
        os.setsid()
    procs.guard_child_tree(parent)  # a parent gone before this line: the control pipe's EOF tells
    global _terminal
    events_fd, control_fd, *output = fds[:-terminal.COUNT]
    _terminal = terminal.Terminal(fds[-terminal.COUNT:])
    if capture:
        own_output(config, output)
    else:
        silence_terminal(config)
    _terminal.adopt(config, capture)
    if env is not None:
        os.environ.clear()
        os.environ.update(env)
    claim_child_markers()  # read by configure; not for what the tests start
    enable_stack_dumps()
    return Sender(events_fd), control_fd


def main() -> int:
    """Entry point of a spawned child: ``python -m pytest_heavy.isolation.child``."""
    with open(os.environ.pop(PAYLOAD_ENV), "rb") as fh:
        payload: SpawnPayload = pickle.load(fh)
    fds = [int(x) for x in os.environ.pop(FDS_ENV).split(",")]
    config = configure(payload["options"], payload["args"])
    sender, control_fd = start_up(config, os.getppid(), fds, capture=len(fds) > 2 + terminal.COUNT, env=None)
    try:
        exitstatus = run_session(config, payload["request"], sender, control_fd)
    finally:
        config._ensure_unconfigure()  # plugins stop what they started at configure before we kill it
    return finish(sender, exitstatus)


if __name__ == "__main__":
    sys.exit(main())
