"""An example script as a test item: run as ``python <file>`` in a supervised process of its own.

Examples import optional heavy libraries and may need a GPU, so the pytest process never imports
them: collection reads only the header (``header.py``), and each example runs in a subprocess of
its own, in its own process session, with its output drained concurrently, a timeout that dumps its
Python stacks before ending its tree (``supervise.py``), and the same memory accounting and report
rows as isolated modules.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import pytest

from .. import draining, markers, memory, procs, supervise, wire
from ..gpu import guard
from ..report import HeavyRecord
from ..settings import Settings
from ..state import RUN, Run
from .bootstrap import BOOTSTRAP, EXIT_SKIP, anonymous_file, compiled
from .header import Header
from .watchdog import Watchdog

STDERR_LINES = 40  # lines of stderr in a failure message
# node id -> heavy-table row of the examples running now; the plugin counts their reports into it
RUNNING = pytest.StashKey[dict[str, HeavyRecord]]()
PLUGIN_NAME = "heavy-example-reports"

class ExampleFailure(Exception):
    """An example that failed or timed out; its message is the whole failure report."""


class ExampleItem(pytest.Item):
    """Runs ``python <file>`` in its own process session and turns its exit into an outcome."""

    runs_in_own_process = True  # isolation markers gate it, but never wrap it in a second process

    def __init__(self, *, header: Header, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.header = header

    def reportinfo(self) -> tuple[Path, int, str]:
        # Skip lines (gating, exit 77) point at the header, where the reason usually is.
        return self.path, self.header.line - 1, f"example {self.nodeid}"

    def runtest(self) -> None:
        run = self.config.stash[RUN]
        timeout = self.header.timeout if self.header.timeout is not None else run.settings.example_timeout
        live = self.config.getoption("capture") == "no"
        gpu_example = markers.needs(self, run.settings).gpu_marker is not None
        refusal = guard.refusal(self.config, f"example {self.nodeid}") if gpu_example else None
        if refusal:
            raise ExampleFailure(refusal)
        record = HeavyRecord(unit=self.nodeid, kind="example", start_method="subprocess", tests=1)
        self.config.stash[RUNNING][self.nodeid] = record
        try:
            sup, stacks, out, err = self._run(run, timeout, live, record, gpu_example)
        finally:
            run.records.append(record)
        if not live:
            self.add_report_section("call", "stdout", out.text())
            self.add_report_section("call", "stderr", err.text())
        if sup.killed and not sup.timed_out:
            self.add_report_section("call", "leftover processes",
                                    "\n".join(f"killed: {victim}" for victim in sup.killed))
        self._outcome(sup, stacks, timeout, err.tail(STDERR_LINES) or "(empty)", run.settings)

    def _run(self, run: Run, timeout: float, live: bool, record: HeavyRecord,
             gpu_example: bool) -> tuple[supervise.Supervisor, str, draining.Drain, draining.Drain]:
        """Start the example, wait (bounded), end its whole tree, and fill in its table row."""
        gpu = run.gpu()
        record.gpu_before_mib = gpu.device_used_mib() if gpu else None
        # faulthandler writes the stacks into an anonymous file passed as a descriptor: no directory
        # to make and remove per example, and stderr stays the example's own.
        stacks_fd = anonymous_file()
        try:
            start = time.monotonic()
            proc = self._start(run, stacks_fd)
            watchdog = _session(self.config).watchdog()
            watchdog.watch(proc.pid)
            sup = supervise.Supervisor(proc, gpu, record.gpu_before_mib, "the example", just_started=True,
                                       threaded=False)
            assert proc.stdout is not None and proc.stderr is not None
            pipes = procs.pipe_inodes(proc.stdout, proc.stderr)
            # Read and sampled by this thread while it waits: no thread to start for a short example.
            out = draining.Drain(proc.stdout, keep=not live, echo=_binary(sys.stdout) if live else None,
                              threaded=False)
            err = draining.Drain(proc.stderr, keep=not live, echo=_binary(sys.stderr) if live else None,
                              threaded=False)
            try:
                if draining.wait(proc, timeout or None, (out, err), sup.monitor.tick) is None:
                    out.background()  # the end sequence has waits of its own
                    err.background()
                    sup.time_out(lambda: os.fstat(stacks_fd).st_size)
            finally:
                peaks = _end(sup, pipes, out, err)
                watchdog.release(proc.pid)
                record.wall_s = time.monotonic() - start
                record.peak_rss_mib = peaks.rss_mib
                record.peak_gpu_mib = peaks.gpu_mib
                record.exit = "timeout" if sup.timed_out else procs.signal_name(proc.returncode)
                record.killed = sup.killed
            stacks = os.pread(stacks_fd, os.fstat(stacks_fd).st_size, 0).decode(errors="replace").strip()
        finally:
            os.close(stacks_fd)
        pids = guard.context_pids(self.config, {proc.pid, *peaks.seen}) if gpu_example else None
        record.released = sup.release(run.settings, pids).text()
        record.gpu_after_mib = gpu.device_used_mib() if gpu else None
        return sup, stacks, out, err

    def _start(self, run: Run, stacks_fd: int) -> subprocess.Popen[bytes]:
        """``python -c BOOTSTRAP ... <file>`` in a session of its own, its code compiled here where that
        is safe (see bootstrap.py); no preexec_fn, so CPython starts it with vfork + exec, whatever
        the size of the pytest process."""
        settings = run.settings
        root = str(self.config.rootpath)
        env = supervise.child_environment(settings, run.hardware, isolated=False)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        cwd = root if settings.examples_cwd == "rootdir" else str(self.path.parent)
        code = compiled(self.path, env)
        code_fd = anonymous_file(code) if code is not None else None
        fds = (stacks_fd,) if code_fd is None else (stacks_fd, code_fd)
        rules = "\n".join(r for r in settings.examples_skip_on if not r.startswith("exit="))
        argv = [sys.executable, "-c", BOOTSTRAP, ",".join(settings.optional_modules), rules, str(stacks_fd),
                "-" if code_fd is None else str(code_fd), str(self.path)]
        try:
            return subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True, pass_fds=fds)
        finally:
            if code_fd is not None:
                os.close(code_fd)  # the child has its own copy, and closes it once read

    def _outcome(self, sup: supervise.Supervisor, stacks: str, timeout: float, tail: str,
                 settings: Settings) -> None:
        """Pass, skip (exit 77, or an exit heavy_examples_skip_on names: reason = last stderr line) or fail
        with the status and stderr's tail."""
        stderr_tail = f"last {STDERR_LINES} lines of stderr:\n{tail}"
        if sup.timed_out:
            source = (f"header timeout={timeout:g}" if self.header.timeout is not None
                      else "ini heavy_example_timeout_s")
            silent = (f"(none: the example did not answer {wire.STACK_SIGNAL.name} within "
                      f"{supervise.STACK_WAIT_S:g} s)")
            lines = [f"{self.nodeid} timed out after {timeout:g} s ({source}); "
                     "its process session was terminated (SIGTERM, then SIGKILL)",
                     "Python stacks at the timeout (faulthandler):", stacks or silent]
            lines += [f"terminated: {victim}" for victim in sup.terminated]
            grace = supervise.TERM_GRACE_S
            lines += [f"killed (still alive after {grace:g} s): {victim}" for victim in sup.killed]
            raise ExampleFailure("\n".join([*lines, stderr_tail]))
        returncode = sup.proc.poll()
        if returncode == 0:
            return
        skip_exits = {int(r[len("exit="):]) for r in settings.examples_skip_on if r.startswith("exit=")}
        if returncode == EXIT_SKIP or returncode in skip_exits:
            reason = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "")
            if returncode != EXIT_SKIP:
                reason = f"{reason} (exit {returncode}: heavy_examples_skip_on)".strip()
            # Raised with the item's location (the header line), as pytest's own skip markers do.
            raise pytest.skip.Exception(reason or f"exit {EXIT_SKIP} (skip) with nothing on stderr",
                                        _use_item_location=True)
        raise ExampleFailure(f"{self.nodeid} failed: {procs.signal_name(returncode or 0)}\n{stderr_tail}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, ExampleFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)


def _binary(text_stream: Any) -> IO[bytes] | None:
    """The binary side of sys.stdout / sys.stderr for live output with ``-s``."""
    return getattr(text_stream, "buffer", None)


def _end(sup: supervise.Supervisor, pipes: list[int], out: draining.Drain,
         err: draining.Drain) -> memory.Peaks:
    """End what is left of the example's tree (also on Ctrl-C) and let its output drain.

    Nothing of its session outlives the run, nor a daemon that left it and still holds its output
    pipes. Those holders are looked for in /proc (milliseconds) only when the output has not reached
    EOF within ``EOF_WAIT_S``: once every write end is closed, nobody can hold them.
    """
    draining.pump((out, err), supervise.EOF_WAIT_S)
    held = out.reading() or err.reading()
    holders = [p for p in procs.pipe_holders(pipes) if p.pid != sup.proc.pid] if held else []
    peaks = sup.reap(holders)
    draining.pump((out, err), 5)  # a grandchild holding the pipes is dead now: the drains reach EOF
    return peaks


class SessionExamples:
    """What the examples of one session share: their reports are counted into their heavy-table rows,
    and the watchdog is started with the first example that runs and closed at the session's end.
    Registered with the first example collected, so a session without examples pays no hook."""

    def __init__(self, running: dict[str, HeavyRecord]) -> None:
        self.running = running
        self._watchdog: Watchdog | None = None

    def watchdog(self) -> Watchdog:
        if self._watchdog is None:
            self._watchdog = Watchdog()
        return self._watchdog

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = self.running.get(report.nodeid)
        if record is not None:
            record.count(report)

    def pytest_unconfigure(self) -> None:
        if self._watchdog is not None:
            self._watchdog.close()


def _session(config: pytest.Config) -> SessionExamples:
    plugin = config.pluginmanager.get_plugin(PLUGIN_NAME)
    assert isinstance(plugin, SessionExamples), "registered with the first example collected"
    return plugin


def count_reports(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin(PLUGIN_NAME):
        config.pluginmanager.register(SessionExamples(config.stash.setdefault(RUNNING, {})), PLUGIN_NAME)
