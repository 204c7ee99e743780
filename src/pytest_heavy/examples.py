"""Example scripts as tests: collected from a ``# pytest:`` header, run as ``python <file>``.

Examples import optional heavy libraries and may need a GPU, so the pytest process never imports
them: collection reads only the leading comment lines, and each example runs in a subprocess of its
own, in its own process session, with its output drained concurrently, a timeout that dumps its
Python stacks before killing it, and the same memory accounting and report rows as isolated modules.

Header grammar (docs/examples/README.md): the leading comment lines of the file hold one line
``# pytest: marker, marker(args), option=value``. Markers become real markers on the item, so
``-m``, tiers, ``CICD=1`` and hardware gating treat an example exactly like a test. Options:
``timeout=SECONDS``, ``skip`` / ``skip_always`` (or ``skip="reason"``).
"""

from __future__ import annotations

import ast
import io
import os
import re
import subprocess
import sys
import tempfile
import time
import tokenize
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
import pytest

from . import gating, markers, procs
from .gpu import guard
from .memory import TreeMonitor, wait_released
from .report import HeavyRecord
from .state import RUN, Run

HEADER_RE = re.compile(r"#\s*pytest:(.*)$")
SKIP_OPTIONS = ("skip", "skip_always")
GRAMMAR = "expected comma-separated markers and options, e.g. '# pytest: requires_vram(24), timeout=900'"
EXIT_SKIP = 77  # the automake convention: "this test cannot run here"
STDERR_LINES = 40  # lines of stderr in a failure message
STACK_WAIT_S = 2.0  # how long the parent waits for faulthandler's dump after STACK_SIGNAL
TERM_GRACE_S = 5.0  # SIGTERM to SIGKILL on timeout: coverage (sigterm = true) saves its data here

# Run inside the example's interpreter: argv = [-c, optional modules, stack file, example, *args].
# It registers faulthandler on STACK_SIGNAL (stacks go to a file, so stderr stays the example's own),
# then runs the file the way `python <file>` does: sys.argv[0], sys.path[0], __name__ == "__main__".
# Its own frames are cut from tracebacks; a missing optional module exits 77 with the reason last.
BOOTSTRAP = f"""\
import faulthandler, os, runpy, signal, sys
_optional, _stacks, path = sys.argv[1], sys.argv[2], sys.argv[3]
_stack_file = open(_stacks, "w")
faulthandler.register(signal.Signals({int(procs.STACK_SIGNAL)}), file=_stack_file, all_threads=True)
sys.argv = sys.argv[3:]
sys.path[0] = os.path.dirname(os.path.realpath(path))
del faulthandler, os, signal
try:
    runpy.run_path(path, run_name="__main__")
except (SystemExit, KeyboardInterrupt):
    raise
except BaseException as exc:
    missing = exc.name if isinstance(exc, ModuleNotFoundError) else None
    wanted = [m for m in _optional.split(",") if missing and (m == missing or m.startswith(missing + "."))]
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename != path:
        tb = tb.tb_next
    sys.excepthook(type(exc), exc.with_traceback(tb), tb)
    if wanted:
        sys.stderr.write("optional dependency " + wanted[0] + " not installed\\n")
    sys.exit({EXIT_SKIP} if wanted else 1)
"""


class HeaderError(ValueError):
    """A ``# pytest:`` header that cannot be honoured; the collector adds file and line."""


@dataclass(frozen=True)
class Header:
    line: int  # 1-based line of the header in the file
    marks: tuple[pytest.MarkDecorator, ...] = ()
    timeout: float | None = None  # None: ini heavy_example_timeout_s
    skip: str | None = None  # reason, when the header says skip / skip_always


def find_header(path: Path) -> tuple[int, str] | None:
    """(line, text after ``pytest:``) of the header in the leading comment lines, or None.

    Only comments and blank lines before the first line of code are read, so a helper module with no
    header is never looked at further and never imported.
    """
    with open(path, encoding="utf-8", errors="replace") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = raw.strip()
            if not line:
                continue
            if not line.startswith("#"):
                return None
            match = HEADER_RE.match(line)
            if match:
                return lineno, match.group(1)
    return None


def _literal(node: ast.expr, what: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, RecursionError):
        raise HeaderError(f"{what}: {ast.unparse(node)!r} is not a literal (numbers, strings, "
                          "tuples, lists, dicts, True/False/None)") from None


def _items(text: str) -> list[str]:
    """The header's top-level comma-separated items (commas inside brackets or strings do not split)."""
    if not text:
        return []
    items, depth, start = [], 0, 0
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type != tokenize.OP:
                continue
            depth += (tok.string in ("(", "[", "{")) - (tok.string in (")", "]", "}"))
            if depth < 0:
                raise SyntaxError("unbalanced brackets")
            if tok.string == "," and depth == 0:
                items.append(text[start:tok.start[1]])
                start = tok.end[1]
    except (tokenize.TokenError, SyntaxError):
        raise HeaderError(f"cannot parse {text!r}: {GRAMMAR}") from None
    items.append(text[start:])
    if not items[-1].strip():  # a trailing comma
        items.pop()
    return items


def _parse_item(item: str, text: str) -> ast.expr | ast.keyword:
    """One item as the argument of a call, parsed (never evaluated): a marker expression or option=value."""
    try:
        call = ast.parse(f"_({item})", mode="eval").body
    except SyntaxError:
        call = None
    if isinstance(call, ast.Call) and len(call.args) + len(call.keywords) == 1:
        return call.args[0] if call.args else call.keywords[0]
    raise HeaderError(f"cannot parse {text!r}: {GRAMMAR}")


def _marker(node: ast.expr) -> pytest.MarkDecorator:
    """``name`` or ``name(literal, key=literal)`` as a marker pytest knows (or warns about)."""
    if isinstance(node, ast.Name):
        name, args, kwargs = node.id, (), {}
    elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in SKIP_OPTIONS:
        name = node.func.id
        args = tuple(_literal(a, f"arguments of {name}") for a in node.args)
        if any(k.arg is None for k in node.keywords):
            raise HeaderError(f"arguments of {name}: **kwargs is not allowed")
        kwargs = {k.arg: _literal(k.value, f"argument {k.arg} of {name}") for k in node.keywords if k.arg}
    else:
        raise HeaderError(f"{ast.unparse(node)!r} is not a marker: write a marker name, optionally "
                          "with literal arguments, e.g. requires_vram(24)")
    try:
        decorator = getattr(pytest.mark, name)  # pytest's registry check: fails under --strict-markers
    except (AttributeError, pytest.fail.Exception) as exc:
        message = exc.msg if isinstance(exc, pytest.fail.Exception) else str(exc)
        raise HeaderError(f"marker {name!r}: {message}") from None
    mark = decorator.with_args(*args, **kwargs)
    if name == "requires_vram":  # checked here so a bad size is reported at the header's line
        try:
            gating.vram_gib(mark.mark)
        except ValueError as exc:
            raise HeaderError(str(exc)) from None
    return mark


def _option(node: ast.keyword) -> tuple[str, float | str]:
    """``timeout=SECONDS`` or ``skip='reason'`` / ``skip_always='reason'``, validated."""
    if node.arg == "timeout":
        value = _literal(node.value, "timeout")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise HeaderError(f"timeout={ast.unparse(node.value)}: expected a positive number of seconds")
        return "timeout", float(value)
    if node.arg in SKIP_OPTIONS:
        value = _literal(node.value, node.arg)
        if not isinstance(value, str) or not value.strip():
            raise HeaderError(f"{node.arg}={ast.unparse(node.value)}: expected a reason string")
        return "skip", value.strip()
    raise HeaderError(f"unknown option {node.arg or '**'!r}: known options are timeout=SECONDS, "
                      "skip, skip_always, skip='reason'")


def parse_header(line: int, text: str) -> Header:
    """Parse the text after ``# pytest:``: markers (with literal arguments) and options, in any order.

    Without ``--strict-markers`` pytest warns about an unknown marker (and the marker still applies,
    as on a test); the collector re-issues that warning at the header's line.
    """
    text = text.strip()
    marks: list[pytest.MarkDecorator] = []
    options: dict[str, float | str] = {}
    for item in _items(text):
        node = _parse_item(item, text)
        if isinstance(node, ast.keyword):
            key, value = _option(node)
            options[key] = value
        elif isinstance(node, ast.Name) and node.id in SKIP_OPTIONS:
            options["skip"] = f"example header says {node.id}"
        else:
            marks.append(_marker(node))
    timeout, skip = options.get("timeout"), options.get("skip")
    assert timeout is None or isinstance(timeout, float)
    assert skip is None or isinstance(skip, str)
    return Header(line, tuple(marks), timeout, skip)


class ExampleFile(pytest.File):
    """An example script: one item, ``<path>::example``; the header is parsed here, never the code."""

    def __init__(self, *, header_line: int, header_text: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.header_line = header_line
        self.header_text = header_text

    def collect(self) -> Iterable[pytest.Item]:
        where = f"{self.nodeid}:{self.header_line}"
        # pytest warns about an unregistered marker; say where it is instead of pointing at this module.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                header = parse_header(self.header_line, self.header_text)
            except HeaderError as exc:
                raise self.CollectError(f"{where}: bad '# pytest:' header: {exc}") from None
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, str(self.path), self.header_line)
        item = ExampleItem.from_parent(self, name="example", header=header)
        for mark in header.marks:
            item.add_marker(mark)
        if header.skip is not None:
            item.add_marker(pytest.mark.skip(reason=header.skip))
        yield item


class ExampleFailure(Exception):
    """An example that failed or timed out; its message is the whole failure report."""


@dataclass
class _Ended:
    """How the example's process ended, gathered while it is stopped and cleaned up."""

    returncode: int = 0
    timed_out: bool = False
    stacks: str = ""
    terminated: list[str] = field(default_factory=list)  # SIGTERMed on timeout
    killed: list[str] = field(default_factory=list)  # SIGKILLed: survivors and leftovers


class ExampleItem(pytest.Item):
    """Runs ``python <file>`` in its own process session and turns its exit into an outcome."""

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
        gpu_example = gating.gpu_marker(markers.names(self), run.settings) is not None
        refusal = guard.refusal(self.config, f"example {self.nodeid}") if gpu_example else None
        if refusal:
            raise ExampleFailure(refusal)
        record = HeavyRecord(unit=self.nodeid, kind="example", start_method="subprocess", tests=1)
        self.config.stash[_PLUGIN].running[self.nodeid] = record
        try:
            ended, out, err = self._run(run, timeout, live, record, gpu_example)
        finally:
            run.records.append(record)
        if not live:
            self.add_report_section("call", "stdout", out.text())
            self.add_report_section("call", "stderr", err.text())
        if ended.killed and not ended.timed_out:
            self.add_report_section("call", "leftover processes",
                                    "\n".join(f"killed: {victim}" for victim in ended.killed))
        self._outcome(ended, timeout, err.tail(STDERR_LINES) or "(empty)")

    def _run(self, run: Run, timeout: float, live: bool, record: HeavyRecord,
             gpu_example: bool) -> tuple[_Ended, procs.Drain, procs.Drain]:
        """Start the example, wait (bounded), stop its whole session, and fill in its table row."""
        settings = run.settings
        root = str(self.config.rootpath)
        env = procs.child_environment(settings, run.hardware)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        cwd = root if settings.examples_cwd == "rootdir" else str(self.path.parent)
        gpu = run.gpu()
        record.gpu_before_mib = gpu.device_used_mib() if gpu else None
        ended = _Ended()
        with tempfile.TemporaryDirectory(prefix="pytest-heavy-example-") as tmp:
            stack_file = os.path.join(tmp, "stacks.txt")
            argv = [sys.executable, "-c", BOOTSTRAP, ",".join(settings.optional_modules), stack_file,
                    str(self.path)]
            start = time.monotonic()
            proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
            monitor = TreeMonitor(proc.pid, gpu)
            assert proc.stdout is not None and proc.stderr is not None
            out = procs.Drain(proc.stdout, keep=not live, echo=_binary(sys.stdout) if live else None)
            err = procs.Drain(proc.stderr, keep=not live, echo=_binary(sys.stderr) if live else None)
            try:
                ended.returncode = proc.wait(timeout or None)
            except subprocess.TimeoutExpired:
                ended.timed_out = True
                ended.stacks = _dump_stacks(proc, stack_file)
                ended.terminated = _terminate(proc, list(monitor.peaks.seen.values()))
            finally:
                # Also reached on Ctrl-C: nothing of the example's session outlives the run.
                peaks = monitor.stop()
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                ended.killed = procs.kill_leftovers(proc.pid, peaks.seen.values())
                out.join(5)  # a grandchild holding the pipes is dead now: the drains reach EOF
                err.join(5)
                record.wall_s = time.monotonic() - start
                record.peak_rss_mib = peaks.rss_mib
                record.peak_gpu_mib = peaks.gpu_mib
                record.exit = "timeout" if ended.timed_out else procs.signal_name(proc.returncode)
                record.killed = ended.killed
        pids = guard.context_pids(self.config, {proc.pid, *peaks.seen}) if gpu_example else None
        record.released = wait_released(gpu, record.gpu_before_mib, settings.vram_tolerance_mib,
                                        settings.release_timeout, pids=pids).text()
        record.gpu_after_mib = gpu.device_used_mib() if gpu else None
        return ended, out, err

    def _outcome(self, ended: _Ended, timeout: float, tail: str) -> None:
        """Pass, skip (exit 77: reason = last stderr line) or fail with the status and stderr's tail."""
        stderr_tail = f"last {STDERR_LINES} lines of stderr:\n{tail}"
        if ended.timed_out:
            source = "header timeout=" if self.header.timeout is not None else "ini heavy_example_timeout_s"
            silent = f"(none: the example did not answer {procs.STACK_SIGNAL.name} within {STACK_WAIT_S:g} s)"
            lines = [f"{self.nodeid} timed out after {timeout:g} s ({source}); "
                     "its process session was terminated (SIGTERM, then SIGKILL)",
                     "Python stacks at the timeout (faulthandler):", ended.stacks or silent]
            lines += [f"terminated: {victim}" for victim in ended.terminated]
            lines += [f"killed (still alive after {TERM_GRACE_S:g} s): {victim}" for victim in ended.killed]
            raise ExampleFailure("\n".join([*lines, stderr_tail]))
        if ended.returncode == 0:
            return
        if ended.returncode == EXIT_SKIP:
            reason = next((line.strip() for line in reversed(tail.splitlines()) if line.strip()), "")
            # Raised with the item's location (the header line), as pytest's own skip markers do.
            raise pytest.skip.Exception(reason or f"exit {EXIT_SKIP} (skip) with nothing on stderr",
                                        _use_item_location=True)
        raise ExampleFailure(f"{self.nodeid} failed: {procs.signal_name(ended.returncode)}\n{stderr_tail}")

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, ExampleFailure):
            return str(excinfo.value)
        return super().repr_failure(excinfo, style=style)


def _binary(text_stream: Any) -> IO[bytes] | None:
    """The binary side of sys.stdout / sys.stderr for live output with ``-s``."""
    return getattr(text_stream, "buffer", None)


def _dump_stacks(proc: subprocess.Popen[bytes], stack_file: str) -> str:
    """Ask the example's faulthandler for every thread's stack and read what it wrote."""
    try:
        os.kill(proc.pid, procs.STACK_SIGNAL)
    except ProcessLookupError:
        return ""
    deadline = time.monotonic() + STACK_WAIT_S
    size = -1
    while time.monotonic() < deadline:
        time.sleep(0.05)
        current = os.path.getsize(stack_file) if os.path.exists(stack_file) else 0
        if current and current == size:  # written and no longer growing
            break
        size = current
    with open(stack_file, encoding="utf-8", errors="replace") as fh:
        return fh.read().strip()


def _terminate(proc: subprocess.Popen[bytes], seen: Iterable[psutil.Process]) -> list[str]:
    """SIGTERM the example's session and every descendant seen; wait a grace period for the example.

    Survivors are SIGKILLed afterwards by ``kill_leftovers``. Returns who was signalled.
    """
    victims = {p.pid: p for p in procs.session_members(proc.pid)}
    for p in seen:
        if p.pid not in victims and p.is_running():
            victims[p.pid] = p
    victims.pop(os.getpid(), None)
    names = []
    for victim in victims.values():
        try:
            label = f"pid {proc.pid} (the example)" if victim.pid == proc.pid else procs.describe(victim)
            victim.terminate()
            names.append(label)
        except psutil.Error:
            continue
    deadline = time.monotonic() + TERM_GRACE_S
    try:
        proc.wait(TERM_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    # psutil waits only for the others: it must never reap ``proc``, whose status Popen reads.
    psutil.wait_procs([v for v in victims.values() if v.pid != proc.pid],
                      timeout=max(0.0, deadline - time.monotonic()))
    return names


class ExamplesPlugin:
    """The collection hooks, and the heavy-table rows of the examples run in this session."""

    def __init__(self, config: pytest.Config, run: Run) -> None:
        self.dirs = [config.rootpath / d for d in run.settings.examples_dirs]
        self.running: dict[str, HeavyRecord] = {}  # node id -> its row, to count the reports

    def inside(self, path: Path) -> bool:
        return any(path == d or path.is_relative_to(d) for d in self.dirs)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        # A plain directory, never a Package: Package.setup() imports __init__.py in the parent.
        return pytest.Dir.from_parent(parent, path=path) if self.inside(path) else None

    @pytest.hookimpl(wrapper=True)
    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> Any:
        collected = yield
        if file_path.suffix != ".py" or not self.inside(file_path):
            return collected
        # pytest's Module (and DoctestModule) would import the file: examples and their helpers never are.
        kept = [c for c in collected if not isinstance(c, pytest.Module)]
        found = find_header(file_path)
        if found is not None:
            kept.append(ExampleFile.from_parent(parent, path=file_path, header_line=found[0],
                                                header_text=found[1]))
        return kept

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = self.running.get(report.nodeid)
        if record is not None:
            record.count(report)


_PLUGIN = pytest.StashKey[ExamplesPlugin]()


def register(config: pytest.Config, run: Run) -> None:
    plugin = config.stash[_PLUGIN] = ExamplesPlugin(config, run)
    config.pluginmanager.register(plugin, "heavy-examples")
