"""spawn: a fresh interpreter per module. Always safe; pays interpreter start and imports each time."""

from __future__ import annotations

import os
import pickle
import pickletools
import subprocess
import sys
import tempfile
from typing import Any

import pytest

from ...wire import FDS_ENV, PAYLOAD_ENV, SpawnPayload
from .. import params
from ..child import LATE_OPTIONS
from .base import Pipes, Started, UnitRequest, child_args, child_options


class SpawnProcess:
    def __init__(self, popen: subprocess.Popen[bytes]) -> None:
        self._popen = popen
        self.pid = popen.pid

    def poll(self) -> int | None:
        return self._popen.poll()

    def send_signal(self, sig: int) -> None:
        if self._popen.poll() is None:
            self._popen.send_signal(sig)


def late_options(options: dict[str, Any]) -> dict[str, Any]:
    """The options, those whose values name a class (a plugin's enum, a path) pickled apart, under
    ``LATE_OPTIONS``: unpickled at once, they would import their plugin before pytest marks it for
    assertion rewriting in the child, which warns (an error under ``-W error``: syrupy's diff mode)."""
    plain, late = {}, {}
    for key, value in options.items():
        blob = pickle.dumps(value)
        if any(op.name in ("GLOBAL", "STACK_GLOBAL") for op, _, _ in pickletools.genops(blob)):
            late[key] = blob
        else:
            plain[key] = value
    return {**plain, LATE_OPTIONS: late}


class SpawnLauncher:
    name = "spawn"

    def __init__(self, config: pytest.Config, capture_output: bool) -> None:
        self._options: dict[str, Any] = late_options(child_options(config))
        self._args = child_args(config)
        self._cwd = str(config.invocation_params.dir)
        self._capture = capture_output
        self._tmp = tempfile.TemporaryDirectory(prefix="pytest-heavy-")
        self._count = 0

    def start(self, request: UnitRequest) -> Started:
        self._count += 1
        payload_path = os.path.join(self._tmp.name, f"payload-{self._count}.pickle")
        with open(payload_path, "wb") as fh:
            pickle.dump(SpawnPayload(options=self._options, args=self._args, request=request.wire()), fh)
        pipes = Pipes(self._capture)
        env = dict(request.env)
        env[PAYLOAD_ENV] = payload_path
        if params.hash_order_differs() and (described := params.write(request.items, self._tmp.name)):
            env[params.PARAMS_ENV] = described
        fds = [pipes.events_w, pipes.control_r, *pipes.captured, *pipes.terminal]  # its output: at exec
        env[FDS_ENV] = ",".join(str(fd) for fd in fds)
        popen = subprocess.Popen(
            [sys.executable, "-m", "pytest_heavy.isolation.child"],
            cwd=self._cwd, env=env, pass_fds=fds,
            stdin=subprocess.DEVNULL,
            stdout=pipes.out_w if self._capture else None,
            stderr=pipes.err_w if self._capture else None,
            start_new_session=True,
        )
        return pipes.started(SpawnProcess(popen))

    def close(self) -> None:
        self._tmp.cleanup()
