"""The child-to-parent event stream: one JSON object per line over a pipe.

Reports travel as pytest's own serialized form (``pytest_report_to_serializable``), so every
plugin that extends reports through those hooks keeps working across the process boundary.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from typing import IO, Any

# fds a child finds in PYTEST_HEAVY_FDS: "events,control"
FDS_ENV = "PYTEST_HEAVY_FDS"
PAYLOAD_ENV = "PYTEST_HEAVY_PAYLOAD"


class Sender:
    """Writes events; safe to call from any thread of the child."""

    def __init__(self, fd: int) -> None:
        self._file = os.fdopen(fd, "wb", buffering=0)
        self._lock = threading.Lock()

    def send(self, event: str, **data: Any) -> None:
        line = json.dumps({"event": event, **data}, default=str).encode() + b"\n"
        with self._lock:
            try:
                self._file.write(line)
            except BrokenPipeError:  # the parent is gone; nothing left to tell
                pass


def events(stream: IO[bytes]) -> Iterator[dict[str, Any]]:
    """Parse events until EOF; a torn last line (child killed mid-write) is dropped."""
    for line in stream:
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue


def tuples(data: dict[str, Any]) -> dict[str, Any]:
    """Undo what JSON does to tuples in a serialized report: a skip's longrepr and the location
    are (path, lineno, text) tuples, and pytest's junit and terminal code check for tuples."""
    for key in ("longrepr", "location"):
        if isinstance(data.get(key), list):
            data[key] = tuple(data[key])
    return data
