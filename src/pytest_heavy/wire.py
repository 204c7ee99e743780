"""The whole parent/child protocol in one place: environment names, signals, exit codes, the options a
child must not inherit, and the event stream (one JSON object per line over a pipe).

Reports travel as pytest's own serialized form (``pytest_report_to_serializable``), so every
plugin that extends reports through those hooks keeps working across the process boundary.
Kept free of package imports: the child side, the launchers and the parent all read it.
"""

from __future__ import annotations

import enum
import importlib
import json
import os
import signal
import threading
import warnings
from collections.abc import Iterator, Mapping
from typing import IO, Any

# --- environment -----------------------------------------------------------------------------------
CHILD_ENV = "PYTEST_HEAVY_CHILD"  # "1" in isolated children: isolation off, hardware from the parent
FDS_ENV = "PYTEST_HEAVY_FDS"  # a spawned child's fds: "events,control"
PAYLOAD_ENV = "PYTEST_HEAVY_PAYLOAD"  # a spawned child's pickled options and request
MEMORY_ENV = "PYTEST_HEAVY_MEMORY"  # "1": measure every test (memattr); figures ride on teardown reports

# --- signals and exit codes ------------------------------------------------------------------------
STACK_SIGNAL = signal.SIGUSR1  # children and examples register faulthandler on it: every thread's stack
EXIT_PARENT_GONE = 3  # a child whose control pipe closed: nobody listens to its reports any more
EXIT_INTERNAL = 70  # EX_SOFTWARE: a forked child that failed before or after running its tests

# Options a child must not inherit as they are: the parent alone selects, debugs and writes reports.
CHILD_OVERRIDES: dict[str, Any] = {
    "usepdb": False, "trace": False, "xmlpath": None, "lf": False, "failedfirst": False, "newfirst": False,
    "keyword": "", "markexpr": "", "deselect": [], "stepwise": False, "stepwise_skip": False,
    "collectonly": False, "heavy_isolate": "never", "heavy_split": None, "heavy_report": None,
    "cov_source": None,  # pytest-cov stays off; coverage's own subprocess/fork patches measure us
    "basetemp": None,  # a given --basetemp is wiped by whoever uses it first: children get their own
}


def in_child(env: Mapping[str, str] = os.environ) -> bool:
    """Whether this process is an isolated child (started by a pytest-heavy parent)."""
    return env.get(CHILD_ENV) == "1"


# --- events ----------------------------------------------------------------------------------------
class Event(str, enum.Enum):
    """What a child tells its parent, in the order a run produces them."""

    COLLECT_ERROR = "collecterror"  # a file failed to collect: {nodeid, longrepr}
    MISSING = "missing"  # node ids the parent asked for that the child did not collect: {nodeids}
    LOGSTART = "logstart"  # {nodeid, location}
    REPORT = "report"  # {data}: pytest_report_to_serializable of a TestReport
    LOGFINISH = "logfinish"  # {nodeid, location}
    WARNING = "warning"  # {when, nodeid, location, message}: see serialize_warning
    INTERRUPT = "interrupt"  # {kind, reason, returncode, where}: pytest.exit() or KeyboardInterrupt in a test
    LEFTOVERS = "leftovers"  # {killed}: what the child killed of its descendants as it finished
    DONE = "done"  # {exitstatus}: the child's session is over; nothing follows


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


def events(stream: IO[bytes]) -> Iterator[dict[str, Any]]:
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
        "filename": wm.filename,
        "lineno": wm.lineno,
        "is_instance": isinstance(message, Warning),
    }


def deserialize_warning(data: dict[str, Any]) -> warnings.WarningMessage:
    """The parent's copy of a child's warning; unknown categories fall back to UserWarning."""
    try:
        category = getattr(importlib.import_module(data["category_module"]), data["category_name"])
        if not (isinstance(category, type) and issubclass(category, Warning)):
            raise TypeError(category)
    except Exception:
        category = UserWarning
    message: Any = data["message"]
    if data.get("is_instance"):
        try:
            message = category(message)
        except Exception:
            message = UserWarning(message)
    return warnings.WarningMessage(message, category, data["filename"], data["lineno"])
