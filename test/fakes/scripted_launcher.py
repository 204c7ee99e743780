"""A launcher that starts no process: it plays back the events a child would send, scripted by test name.

Handed to the controller through the ``pytest_heavy_make_launcher`` hook (``pytest_plugins`` in a
generated conftest), so the controller's restart, crash, missing-test and ``-x`` logic runs for real
against a child whose behaviour is known exactly. By test function name:

- ``test_crash*``: the child dies during the test's call (SIGSEGV), after its setup passed;
- ``test_setup_crash*``: the child dies during the test's setup (SIGSEGV), before reporting it;
- ``test_fail*``: the call fails;
- ``test_missing*``: the child did not collect it;
- ``test_early*``: the child dies before it starts any test;
- ``test_oom_once*``: the call fails with torch's "CUDA out of memory" the first time it runs, then passes;
- ``test_oom_always*``: the call fails with "CUDA out of memory" every time;
- anything else passes.

A child stops after ``request.maxfail`` failures, as a real one does. Every request is appended, as a
JSON line of node ids, to the file named by ``SCRIPTED_LAUNCHER_LOG``, and its unit with the
``CUDA_VISIBLE_DEVICES`` it was given, as a JSON line, to that file's name plus ``.placements``.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time

import pytest

from pytest_heavy import wire
from pytest_heavy.isolation.launch.base import Started, UnitRequest

OOM_TEXT = ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total "
            "capacity of 79.19 GiB of which 1.05 GiB is free.")


class ScriptedProcess:
    def __init__(self, returncode: int) -> None:
        done = subprocess.Popen(["true"])  # a real pid that is gone: the tree monitor finds nothing
        done.wait()
        self.pid = done.pid
        self._returncode = returncode

    def poll(self) -> int | None:
        return self._returncode

    def send_signal(self, sig: int) -> None:
        pass


class ScriptedLauncher:
    def __init__(self, config: pytest.Config, name: str) -> None:
        self.config = config
        self.name = name
        self.ran: set[str] = set()  # node ids some child already ran

    def start(self, request: UnitRequest) -> Started:
        with open(os.environ["SCRIPTED_LAUNCHER_LOG"], "a") as log:
            log.write(json.dumps(request.nodeids) + "\n")
        with open(os.environ["SCRIPTED_LAUNCHER_LOG"] + ".placements", "a") as log:
            cuda = request.env.get("CUDA_VISIBLE_DEVICES")
            log.write(json.dumps({"unit": request.unit, "cuda": cuda}) + "\n")
        lines: list[dict] = []
        returncode = self._play(request, lines)
        control_r, control_w = os.pipe()
        os.close(control_r)  # a 'stop' written to it fails quietly, as to a child that already ended
        events = io.BytesIO(b"".join(wire.encode(e) for e in lines))
        stderr = io.BytesIO(b"Fatal Python error: Segmentation fault\n" if returncode < 0 else b"")
        return Started(process=ScriptedProcess(returncode), events=events, control=control_w,
                       stdout=io.BytesIO(b""), stderr=stderr, parent_fds=(control_w,))

    def _play(self, request: UnitRequest, lines: list[dict]) -> int:
        by_id = {item.nodeid: item for item in request.items}
        missing = [n for n in request.nodeids if by_id[n].name.startswith("test_missing")]
        if missing:
            lines.append({"event": "missing", "nodeids": missing})
        failures = 0
        for nodeid in request.nodeids:
            item = by_id[nodeid]
            if nodeid in missing:
                continue
            if item.name.startswith("test_early"):
                return -signal.SIGSEGV
            lines.append({"event": "logstart", "nodeid": nodeid, "location": item.location})
            if item.name.startswith("test_setup_crash"):
                return -signal.SIGSEGV
            lines.append(self._report(item, "setup", "passed"))
            if item.name.startswith("test_crash"):
                return -signal.SIGSEGV
            oom = item.name.startswith("test_oom_always") or (
                item.name.startswith("test_oom_once") and nodeid not in self.ran)
            self.ran.add(nodeid)
            failed = item.name.startswith("test_fail") or oom
            longrepr = OOM_TEXT if oom else "scripted failure"
            lines.append(self._report(item, "call", "failed" if failed else "passed", longrepr))
            lines.append(self._report(item, "teardown", "passed"))
            lines.append({"event": "logfinish", "nodeid": nodeid, "location": item.location})
            failures += failed
            if request.maxfail and failures >= request.maxfail:
                return int(pytest.ExitCode.INTERRUPTED)
        return int(pytest.ExitCode.TESTS_FAILED if failures else pytest.ExitCode.OK)

    def _report(self, item: pytest.Item, when: str, outcome: str, longrepr: str = "scripted failure") -> dict:
        now = time.time()
        report = pytest.TestReport(
            nodeid=item.nodeid, location=item.location, keywords={k: 1 for k in item.keywords},
            outcome=outcome, when=when, longrepr=longrepr if outcome == "failed" else None,  # type: ignore[arg-type]
            sections=[], duration=0.0, start=now, stop=now, user_properties=[],
        )
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        return {"event": "report", "data": data}

    def close(self) -> None:
        pass


def pytest_heavy_make_launcher(config: pytest.Config, method: str) -> ScriptedLauncher:
    return ScriptedLauncher(config, method)
