"""The whole parent/child protocol in one place: environment names, signals, exit codes, what the parent
sends a child (its request, the payload of a spawned child, the control pipe's message) and the event
stream (length-prefixed frames of plain data over a pipe), each message a typed class.

Reports travel as pytest's own serialized form (``pytest_report_to_serializable``), so every
plugin that extends reports through those hooks keeps working across the process boundary.
Kept free of package imports: the child side, the launchers and the parent all read it.
"""

from __future__ import annotations

import builtins
import contextlib
import enum
import fcntl
import functools
import io
import os
import pickle
import re
import signal
import struct
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from typing import IO, Any, Literal, TypedDict

# --- environment -----------------------------------------------------------------------------------
CHILD_ENV = "PYTEST_HEAVY_CHILD"  # "1" in isolated children: isolation off, hardware from the parent
FDS_ENV = "PYTEST_HEAVY_FDS"  # a spawned child's fds: "events,control,..." (child.start_up)
PAYLOAD_ENV = "PYTEST_HEAVY_PAYLOAD"  # a spawned child's pickled options and request
MEMORY_ENV = "PYTEST_HEAVY_MEMORY"  # "1": measure every test (memattr); figures ride on teardown reports

# --- signals and exit codes ------------------------------------------------------------------------
STACK_SIGNAL = signal.SIGUSR1  # children and examples register faulthandler on it: every thread's stack
EXIT_PARENT_GONE = 3  # a child whose control pipe closed: nobody listens to its reports any more
EXIT_INTERNAL = 70  # EX_SOFTWARE: a forked child that failed before or after running its tests


HARDWARE_ENV = "PYTEST_HEAVY_HARDWARE"  # the parent's probe, as JSON (hardware.HARDWARE_ENV; read there)
# The pid of the process the child marker belongs to, set by the child itself once it is configured.
CHILD_PID_ENV = "PYTEST_HEAVY_CHILD_PID"


def in_child(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is an isolated child, started by a pytest-heavy parent: it has the child
    marker, and the marker was not inherited from a child (``claim_child_markers``)."""
    env = os.environ if env is None else env
    owner = env.get(CHILD_PID_ENV)
    return env.get(CHILD_ENV) == "1" and (owner is None or owner == str(os.getpid()))


def claim_child_markers() -> None:
    """Called by a child once it is configured: the marker now names this process, and the parent's
    hardware leaves the environment. Every process the tests start inherits the environment; a nested
    pytest of an unrelated project that never opted in used to come up enabled, as a child, with this
    machine's hardware. It now finds a marker naming another process and stays off."""
    if os.environ.get(CHILD_ENV) == "1":
        os.environ[CHILD_PID_ENV] = str(os.getpid())
    os.environ.pop(HARDWARE_ENV, None)


# --- parent -> child ------------------------------------------------------------------------------
class RunRequest(TypedDict):
    """What a child runs: exactly these node ids, collected from ``paths`` (spawn, template)."""

    unit: str  # the isolated module's path, as the heavy table names it
    nodeids: list[str]
    paths: list[str]
    maxfail: int  # failures left before the session stops (0: no limit)
    staged: bool  # collect, then wait for ``go`` on the control pipe before running (see ``go``)


class SpawnPayload(TypedDict):
    """A spawned child's pickled file (``PAYLOAD_ENV``): the parent's options, arguments and request."""

    options: dict[str, Any]
    args: list[str]
    request: RunRequest


STOP = b"stop\n"  # the control pipe's message: stop after the current test (EOF: the parent is gone)
RESUME = b"resume\n"  # the answer to Event.DEBUGGER: the parent wrote everything before it to the terminal
GO = re.compile(rb"go (\d+)\n")  # a staged child's word to run, with the failures left then (maxfail)


def go(maxfail: int) -> bytes:
    """The control pipe's message that lets a staged child run its tests, collected already while
    the child before it ran (``controller.stage_next``): ``maxfail`` as it stands now."""
    return b"go %d\n" % maxfail


# --- events ----------------------------------------------------------------------------------------
class Event(str, enum.Enum):
    """What a child tells its parent, in the order a run produces them; each line's fields are the
    typed class below of the same name."""

    COLLECT_ERROR = "collecterror"  # a file failed to collect
    MISSING = "missing"  # node ids the parent asked for that the child did not collect
    LOGSTART = "logstart"
    REPORT = "report"  # pytest_report_to_serializable of a TestReport
    LOGFINISH = "logfinish"
    WARNING = "warning"  # see serialize_warning
    INTERRUPT = "interrupt"  # pytest.exit() or KeyboardInterrupt in a test
    DEBUGGER = "debugger"  # pdb is about to use the terminal: answered with RESUME on the control pipe
    STATE = "state"  # plugins' session-level state (pytest_heavy_session_state), as the session ends
    LEFTOVERS = "leftovers"  # what the child killed of its descendants as it finished
    DONE = "done"  # the child's session is over; nothing follows


class LogStart(TypedDict):
    event: Literal["logstart"]
    nodeid: str
    location: tuple[str, int | None, str]


class Report(TypedDict):
    event: Literal["report"]
    data: dict[str, Any]


class LogFinish(TypedDict):
    event: Literal["logfinish"]
    nodeid: str
    location: tuple[str, int | None, str]


class WarningEvent(TypedDict):
    event: Literal["warning"]
    when: str
    nodeid: str
    location: tuple[str, int, str] | None
    message: dict[str, Any]


class CollectError(TypedDict):
    event: Literal["collecterror"]
    nodeid: str
    longrepr: str


class Missing(TypedDict):
    event: Literal["missing"]
    nodeids: list[str]


class Interrupt(TypedDict):
    event: Literal["interrupt"]
    kind: str  # 'Exit' or 'KeyboardInterrupt'
    reason: str
    returncode: int | None
    where: str  # 'path:line' of the test that raised it


class Debugger(TypedDict):
    event: Literal["debugger"]


class SessionState(TypedDict):
    event: Literal["state"]
    state: dict[str, Any]


class Leftovers(TypedDict):
    event: Literal["leftovers"]
    killed: list[str]


class Done(TypedDict):
    event: Literal["done"]
    exitstatus: int


# One parsed line of the stream, told apart by its "event" key.
Message = (LogStart | Report | LogFinish | WarningEvent | CollectError | Missing | Interrupt | Debugger
           | SessionState | Leftovers | Done)


# A report's extra key: the live-log text (log_cli) the child wrote before it, printed by the parent.
LIVE_LOG_KEY = "pytest_heavy_live_log"
# A report's extra key: what the test wrote to stdout past pytest's capture, written out by the parent.
OUTSIDE_KEY = "pytest_heavy_outside_output"
# A report's extra key: the junit records its test made in the child (``isolation/junit.py``).
JUNIT_KEY = "pytest_heavy_junit"
# A report's extra key: its longrepr has no crash line (``isolation/longrepr.py``).
PLAIN_LONGREPR_KEY = "pytest_heavy_plain_longrepr"
# Every extra key a child may add: a report with none of them is rebuilt by pytest alone.
REPORT_KEYS = (LIVE_LOG_KEY, OUTSIDE_KEY, JUNIT_KEY, PLAIN_LONGREPR_KEY)


class Sender:
    """Writes events; safe to call from any thread of the child. One pickler and buffer serve every
    event (a module of 10,000 tests sends 50,000): each frame costs one ``dump`` and one ``write``."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._lock = threading.Lock()
        self._buffer = io.BytesIO()
        self._pickler = _PlainPickler(self._buffer, protocol=pickle.HIGHEST_PROTOCOL)

    def send(self, event: Event, **data: Any) -> None:
        with self._lock:
            frame = _frame(self._pickler, self._buffer, {"event": event.value, **data})
            try:
                self._file.write(frame)
            except BrokenPipeError:  # the parent is gone; nothing left to tell
                pass


# --- the codec ---------------------------------------------------------------------------------------
# An event is a frame: its length (4 bytes, big-endian), then the event pickled. Pickle, not JSON: a
# report's serialized form holds tuples that must stay tuples (a skip's longrepr, the location, which
# junit and the terminal check for; ``record_property("t", (1, 2))``), and pickle keeps them in C, where
# JSON needed a walk over every report in Python on each side (~40 us a report to write, ~30 to read,
# against ~6 and ~9). Only plain data crosses: whatever else a report holds goes as its ``str()``
# (as JSON's ``default=str`` did), and the parent's unpickler refuses any other class, so a child can
# never make the parent import anything (a tensor in ``user_properties`` would import torch there).
PLAIN: tuple[Any, ...] = (str, int, float, bool, bytes, list, tuple, dict, type(None))
CONVERTIBLE: tuple[Any, ...] = (int, float, str, bytes, dict, list, tuple)  # bool is never subclassed
HEADER = struct.Struct(">I")


class _PlainPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if any(obj is kind for kind in PLAIN):  # the constructors the reductions below name
            return NotImplemented
        for kind in CONVERTIBLE:  # subclasses of plain types (enums, OrderedDict, namedtuples)
            if isinstance(obj, kind):
                return kind, (kind(obj),)
        return str, (str(obj),)


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        kind = getattr(builtins, name, None) if module == "builtins" else None
        if kind is None or not any(kind is allowed for allowed in PLAIN):
            raise pickle.UnpicklingError(f"{module}.{name} is not plain data")
        return kind


def encode(event: dict[str, Any]) -> bytes:
    """One event's frame, as ``Sender`` writes it (a test's fake launcher builds its stream with it)."""
    buffer = io.BytesIO()
    return _frame(_PlainPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL), buffer, event)


def _frame(pickler: pickle.Pickler, buffer: io.BytesIO, event: dict[str, Any]) -> bytes:
    """``event``'s frame, pickled by ``pickler`` into ``buffer`` (emptied first)."""
    buffer.seek(0)
    buffer.truncate()
    buffer.write(HEADER.pack(0))
    pickler.clear_memo()
    pickler.dump(event)
    with buffer.getbuffer() as frame:
        HEADER.pack_into(frame, 0, len(frame) - HEADER.size)
        return bytes(frame)


READ_PAUSE_S = 0.005  # between two reads of a busy child's events: see ``EventStream``
BUSY_FRAMES = 10  # a read that brought more (two tests' events) finds the child busy: pause after it
PIPE_SIZE = 1 << 20  # the most an unprivileged process may ask for (/proc/sys/fs/pipe-max-size)


class EventStream:
    """A child's events, read as they come by a caller that selects on ``fileno``: each ``read``
    returns the events its bytes completed (none for a part of a frame), None at the end; a torn last
    frame (child killed mid-write) is dropped. A stream that is not a pipe (a test's fake) is read as
    a file (``fd`` None).

    Each event is written as it happens (a child that dies next must have told everything before it),
    so a module of 10,000 quick tests writes 50,000 times. A reader blocked on the pipe is woken by
    every one of those writes, and on a busy machine the child loses its CPU to it each time (0.3 ms
    a write on the 2-core VM, a quarter of such a child's time). So after a read that finds the child
    that ``busy`` (more than ``BUSY_FRAMES`` events at once) the reader pauses a few milliseconds while
    the writes pile up in the pipe (enlarged to hold them) and nobody waits on it: the child's writes
    stay as prompt, and cost a plain syscall each. A child whose tests take milliseconds each is read
    at once, so its last test's report, and the next staged child's turn, wait for no pause. What one
    read brought is handed on as one list: the parent passes it between threads once, not per event.
    """

    def __init__(self, stream: IO[bytes]) -> None:
        self._pending = b""
        self.fd: int | None
        try:
            self.fd = stream.fileno()
        except (OSError, ValueError, AttributeError):
            self.fd, self._read = None, stream.read
        else:
            with contextlib.suppress(OSError, AttributeError):  # Linux's; the default size works too
                fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, PIPE_SIZE)  # type: ignore[attr-defined]
            self._read = functools.partial(os.read, self.fd)

    def fileno(self) -> int:
        assert self.fd is not None
        return self.fd

    def read(self) -> list[Message] | None:
        chunk = self._read(PIPE_SIZE)
        if not chunk:
            return None
        self._pending += chunk
        batch, at = _frames(memoryview(self._pending))
        self._pending = self._pending[at:]
        return batch

    def pause_after(self, batch: list[Message]) -> None:
        if self.fd is not None and len(batch) > BUSY_FRAMES:
            time.sleep(READ_PAUSE_S)


def _frames(view: memoryview) -> tuple[list[Message], int]:
    """The whole frames at the start of ``view``, parsed, and where the first incomplete one starts."""
    batch: list[Message] = []
    at, size_of = 0, len(view)
    while size_of - at >= HEADER.size:
        (size,) = HEADER.unpack_from(view, at)
        end = at + HEADER.size + size
        if end > size_of:
            break
        try:
            batch.append(_PlainUnpickler(io.BytesIO(view[at + HEADER.size:end])).load())
        except Exception:  # not an event of ours: skipped, as a torn line was
            pass
        at = end
    return batch, at


def serialize_warning(wm: warnings.WarningMessage) -> dict[str, Any]:
    message = wm.message
    return {
        "message": str(message),
        "category_module": wm.category.__module__,
        "category_name": wm.category.__qualname__,
        # The category's bases by name, most specific first: the parent resolves the first one it has.
        "category_bases": [[c.__module__, c.__qualname__] for c in wm.category.__mro__[1:]
                           if issubclass(c, Warning)],
        "filename": wm.filename,
        "lineno": wm.lineno,
        "is_instance": isinstance(message, Warning),
    }


def _loaded_category(module: str, qualname: str) -> type[Warning] | None:
    """The warning class ``module.qualname`` if the parent has imported that module already, else None.

    Never imports: a module only an isolated test imported (torch, vLLM) would otherwise be loaded into
    the pytest parent by a child's warning, which is what isolation exists to prevent (and the child's
    data would choose what the parent imports).
    """
    found: Any = sys.modules.get(module)
    for part in qualname.split("."):
        found = getattr(found, part, None)
    return found if isinstance(found, type) and issubclass(found, Warning) else None


def deserialize_warning(data: dict[str, Any]) -> warnings.WarningMessage:
    """The parent's copy of a child's warning: its category if the parent has it loaded, else its
    nearest loaded base (a library's FutureWarning subclass stays a FutureWarning), else UserWarning."""
    names = [(data["category_module"], data["category_name"]), *map(tuple, data.get("category_bases", ()))]
    category = next(filter(None, (_loaded_category(m, q) for m, q in names)), UserWarning)
    message: Any = data["message"]
    if data.get("is_instance"):
        try:
            message = category(message)
        except Exception:
            message = UserWarning(message)
    return warnings.WarningMessage(message, category, data["filename"], data["lineno"])
