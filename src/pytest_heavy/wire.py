"""The whole parent/child protocol in one place: environment names, signals, exit codes, what the parent
sends a child (its request, the payload of a spawned child, the control pipe's message) and the event
stream (one JSON object per line over a pipe), each message a typed class.

Reports travel as pytest's own serialized form (``pytest_report_to_serializable``), so every
plugin that extends reports through those hooks keeps working across the process boundary.
Kept free of package imports: the child side, the launchers and the parent all read it.
"""

from __future__ import annotations

import enum
import json
import os
import signal
import sys
import threading
import warnings
from collections.abc import Iterator, Mapping
from typing import IO, Any, Literal, TypedDict

# --- environment -----------------------------------------------------------------------------------
CHILD_ENV = "PYTEST_HEAVY_CHILD"  # "1" in isolated children: isolation off, hardware from the parent
FDS_ENV = "PYTEST_HEAVY_FDS"  # a spawned child's fds: "events,control"
PAYLOAD_ENV = "PYTEST_HEAVY_PAYLOAD"  # a spawned child's pickled options and request
SERVER_FD_ENV = "PYTEST_HEAVY_FORKSERVER_FD"  # the forkserver's end of its socket pair
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
    """What a child runs: exactly these node ids, collected from ``paths`` (spawn, forkserver)."""

    unit: str  # the isolated module's path, as the heavy table names it
    nodeids: list[str]
    paths: list[str]
    maxfail: int  # failures left before the session stops (0: no limit)


class SpawnPayload(TypedDict):
    """A spawned child's pickled file (``PAYLOAD_ENV``): the parent's options, arguments and request."""

    options: dict[str, Any]
    args: list[str]
    request: RunRequest


STOP = b"stop\n"  # the control pipe's one message: stop after the current test (EOF: the parent is gone)


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


class Leftovers(TypedDict):
    event: Literal["leftovers"]
    killed: list[str]


class Done(TypedDict):
    event: Literal["done"]
    exitstatus: int


# One parsed line of the stream, told apart by its "event" key.
Message = LogStart | Report | LogFinish | WarningEvent | CollectError | Missing | Interrupt | Leftovers | Done


# A report's extra key: the live-log text (log_cli) the child wrote before it, printed by the parent.
LIVE_LOG_KEY = "pytest_heavy_live_log"
# A report's extra key: what the test wrote to stdout past pytest's capture, written out by the parent.
OUTSIDE_KEY = "pytest_heavy_outside_output"


class Sender:
    """Writes events; safe to call from any thread of the child."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._lock = threading.Lock()

    def send(self, event: Event, **data: Any) -> None:
        line = json.dumps(_tag_tuples({"event": event.value, **data}), default=str).encode() + b"\n"
        with self._lock:
            try:
                self._file.write(line)
            except BrokenPipeError:  # the parent is gone; nothing left to tell
                pass


def events(stream: IO[bytes]) -> Iterator[Message]:
    """Parse events until EOF; a torn last line (child killed mid-write) is dropped."""
    for line in stream:
        try:
            yield json.loads(line, object_hook=_untag_tuple)
        except json.JSONDecodeError:
            continue


TUPLE_KEY = "__pytest_heavy_tuple__"


def _tag_tuples(obj: Any) -> Any:
    """JSON has no tuples, and pytest's reports hold some that must stay tuples: a skip's longrepr and
    the location (junit and the terminal check for them), and ``record_property("t", (1, 2))``, which
    junit writes as ``(1, 2)`` in-process. Each is sent marked and rebuilt by ``_untag_tuple``."""
    if isinstance(obj, tuple):
        return {TUPLE_KEY: [_tag_tuples(x) for x in obj]}
    if isinstance(obj, list):
        return [_tag_tuples(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _tag_tuples(v) for k, v in obj.items()}
    return obj


def _untag_tuple(obj: dict[str, Any]) -> Any:
    return tuple(obj[TUPLE_KEY]) if len(obj) == 1 and TUPLE_KEY in obj else obj


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
