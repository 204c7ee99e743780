"""The launcher protocol and what every start method shares: pipes, payload, safety checks."""

from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass, field
from typing import IO, Any, Protocol

import pytest

from ... import cleanup, draining
from ...wire import RunRequest
from .. import terminal
from ..child import INVOCATION_OPTION
from ..threads import thread_unsafe_reason


@dataclass
class UnitRequest:
    """What a child is asked to run."""

    unit: str
    nodeids: list[str]
    paths: list[str]  # files to collect (spawn, template)
    maxfail: int  # failures left before the session stops (0: no limit)
    items: list[pytest.Item] = field(default_factory=list)  # the parent's items (fork)
    env: dict[str, str] = field(default_factory=dict)
    staged: bool = False  # ahead of its turn: it collects, then waits for ``wire.go`` (template, spawn)

    def wire(self) -> RunRequest:
        return RunRequest(unit=self.unit, nodeids=self.nodeids, paths=self.paths, maxfail=self.maxfail,
                          staged=self.staged)


class RefusedError(RuntimeError):
    """A launcher could not start a child safely; the controller falls back to spawn, for good when
    ``final`` (the launcher cannot start any child: said once, not once per module)."""

    def __init__(self, message: str, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


@dataclass
class Started:
    process: draining.Process
    events: IO[bytes]  # read end of the event stream
    control: int  # write end of the control pipe
    stdout: IO[bytes] | None  # None when the child writes to our terminal (-s)
    stderr: IO[bytes] | None
    parent_fds: tuple[int, ...] = ()  # the numbers of our ends, released once the attempt is over
    capture: tuple[int, ...] | None = None  # our fds of the child's capture files (stdout, stderr, terminal)

    def close(self) -> dict[str, str]:
        """The child is gone: close our ends (the streams are closed at EOF by their readers) and return
        what its capture files hold: its last test's output since its last phase ('stdout', 'stderr')
        and what its terminal reporter wrote since that test started ('terminal'). A test that died
        kept them there; they are all that is left of it once the child is gone."""
        os.close(self.control)
        release_parent_fds(*self.parent_fds)
        texts = {}
        for name, fd in zip(("stdout", "stderr", "terminal"), self.capture or (), strict=False):
            texts[name] = os.pread(fd, min(os.fstat(fd).st_size, 1 << 20), 0).decode("utf-8", "replace")
            os.close(fd)
        return texts


class Launcher(Protocol):
    name: str

    def start(self, request: UnitRequest) -> Started: ...

    def close(self) -> None: ...


def capture_file() -> int:
    """An anonymous file (created and unlinked at once): the child captures a test's output in it
    and the parent, holding the same open file, reads what a test that died left there."""
    fd, path = tempfile.mkstemp(prefix="pytest-heavy-capture-")
    os.unlink(path)
    return fd


class Pipes:
    """The pipes and capture files of one child. ``child_fds`` go to the child (in the order
    events, control, then with capture stdout, stderr, captured stdout, captured stderr, terminal,
    and last copies of our stdin, stdout and stderr: ``terminal.py``); the parent keeps the other ends."""

    def __init__(self, capture_output: bool) -> None:
        self.events_r, self.events_w = os.pipe()
        self.control_r, self.control_w = os.pipe()
        self.out_r = self.out_w = self.err_r = self.err_w = -1
        self.captured: list[int] = []  # the child's capture files: stdout, stderr, terminal
        self.captured_r: list[int] = []  # our copies
        if capture_output:
            self.out_r, self.out_w = os.pipe()
            self.err_r, self.err_w = os.pipe()
            self.captured = [capture_file() for _ in range(3)]
            self.captured_r = [os.dup(fd) for fd in self.captured]
        self.terminal = terminal.parent_ends()
        for fd in self.parent_fds():
            os.set_inheritable(fd, False)
            PARENT_FDS.add(fd)

    def child_fds(self) -> list[int]:
        ends = [fd for fd in (self.events_w, self.control_r, self.out_w, self.err_w) if fd >= 0]
        return ends + self.captured + self.terminal

    def close_child_ends(self) -> None:
        for fd in self.child_fds():
            os.close(fd)

    def parent_fds(self) -> tuple[int, ...]:
        return (*(fd for fd in (self.events_r, self.control_w, self.out_r, self.err_r) if fd >= 0),
                *self.captured_r)

    def started(self, process: draining.Process) -> Started:
        self.close_child_ends()
        return Started(
            parent_fds=self.parent_fds(),
            process=process,
            events=os.fdopen(self.events_r, "rb"),
            control=self.control_w,
            stdout=os.fdopen(self.out_r, "rb") if self.out_r >= 0 else None,
            stderr=os.fdopen(self.err_r, "rb") if self.err_r >= 0 else None,
            capture=tuple(self.captured_r) or None,
        )


# Parent-side pipe ends currently open: a forked child closes them, so it never holds another
# child's pipes open (which would hide that child's end from the parent).
PARENT_FDS: set[int] = set()


def release_parent_fds(*fds: int) -> None:
    for fd in fds:
        PARENT_FDS.discard(fd)


# Options a child must not inherit as they are: the parent alone selects, debugs and writes reports.
CHILD_OVERRIDES: dict[str, Any] = {
    "usepdb": False, "trace": False, "xmlpath": None, "lf": False, "failedfirst": False, "newfirst": False,
    "keyword": "", "markexpr": "", "deselect": [], "stepwise": False, "stepwise_skip": False,
    "collectonly": False, "heavy_isolate": "never", "heavy_split": None, "heavy_report": None,
    "cov_source": None,  # pytest-cov stays off; coverage's own subprocess/fork patches measure us
    "basetemp": None,  # a given --basetemp is wiped by whoever uses it first: children get their own
}


def child_options(config: pytest.Config) -> dict[str, Any]:
    """The parent's resolved options, minus what cannot cross a process boundary, plus overrides."""
    options = {}
    for key, value in vars(config.option).items():
        try:
            pickle.dumps(value)
        except Exception:
            continue
        options[key] = value
    options.pop("file_or_dir", None)  # positional args: the child gets its own
    options["plugins"] = []  # in child_args instead, where pytest reads them before entry points
    options.update(CHILD_OVERRIDES)
    options[INVOCATION_OPTION] = list(config.invocation_params.args)  # see child.invoked_as_parent
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:  # the child's writes go nowhere, but explanations follow the parent's colours
        options["color"] = "yes" if reporter._tw.hasmarkup else "no"
    return options


def plugin_args(config: pytest.Config) -> list[str]:
    """The parent's ``-p`` arguments (command line, PYTEST_ADDOPTS, addopts), each plugin's last
    word only: ``-p no:x -p x`` is ``-p x``. Given to the child's command line, they are read
    before plugins load from entry points, as in the parent; replayed in order after loading,
    ``no:x`` would unregister a plugin that ``x`` then registers twice (argparse conflicts)."""
    last: dict[str, str] = {}
    for arg in config.option.plugins or []:
        name = arg.removeprefix("no:")
        last.pop(name, None)
        last[name] = arg
    return [part for arg in last.values() for part in ("-p", arg)]


def child_args(config: pytest.Config) -> list[str]:
    """Arguments that pin the child to the parent's rootdir, ini file and plugins."""
    args = [*plugin_args(config), "--rootdir", str(config.rootpath)]
    if config.inipath is not None:
        args += ["-c", str(config.inipath)]
    return args


def import_for_children() -> None:
    """Import what a child imports in its first test when it measures memory (memattr's per-test
    monitor: --heavy-report, --heavy-report-html, a memory limit), once in the process that forks
    the children, so that each does not import it again (10-25 ms a child on the 2-core VM, where
    PYTHONDONTWRITEBYTECODE=1 makes every import compile). Costs one import in runs that measure
    nothing: psutil and ``memory``, which it needs, are loaded by then anyway."""
    from ...memattr import sampler  # noqa: F401


def fork_unsafe_reason() -> str | None:
    """Why forking this process now could hang or break a child, or None when it is safe.

    A CUDA context does not survive fork; neither does an OpenMP pool a parallel op started (the
    child's first parallel op waits for its workers forever): ``threads`` tells that pool apart from
    the idle thread ``import torch`` starts, which is harmless.
    """
    if cleanup.cuda_initialized():
        return "CUDA is initialized in this process"
    return thread_unsafe_reason()
