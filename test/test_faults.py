"""The fault matrix: hostile tests x start method x worker count, each a real pytest run end to end.

Every cell generates a small project with two heavy modules: ``test_a_other.py``, well behaved, and
``test_fault.py``, which does one hostile thing. The run gets a unique marker string in its
environment (``FAULT_MARK``), and every command the generated tests start carries it on its command
line too. Each cell checks what a user relies on:

- the run ends: it runs under a subprocess timeout (a bound, not a timed assertion);
- every collected test has exactly one outcome in junit, the one an in-process run gives
  (``test_in_process_baseline`` checks each fault's expected outcomes in one process, where that
  process survives the fault);
- captured output belongs to its own test (each test prints a token naming itself);
- the exit code;
- afterwards no process whose environment or command line carries the marker is alive.

Cells without workers run in the default tier; ``--heavy-workers 2`` cells (and those of ``ALL_SLOW``)
are marked ``slow``: ``pytest -m slow test/test_faults.py`` runs them.
"""

from __future__ import annotations

import fnmatch
import os
import re
import signal
import subprocess
import sys
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from methods import METHODS, PARAMS
from methods import marks as method_marks

RUN_BOUND_S = 120  # a run that takes longer than this never ends, as far as these tests are concerned
GONE_BOUND_S = 15  # how long processes of a run may take to disappear after it ended

INI = """[pytest]
heavy_ram_gib = 1
junit_family = xunit1
junit_logging = all
"""

# Imported by every generated module: the marker, a sleeper command that carries it, and a print
# that names the test it comes from.
HELPERS = '''
import os, pathlib, sys, time
MARK = os.environ["FAULT_MARK"]
SLEEPER = [sys.executable, "-c", "import time; time.sleep(1000)", MARK]

def say(name):
    print(f"OUT-{MARK}-{name}")
    sys.stderr.write(f"ERR-{MARK}-{name}\\n")

def meet(me, other):
    """With two workers, both modules' first tests wait for each other (bounded) twice: both print in
    between, so each child's test output is written while the other's test runs; alone, nothing waits."""
    if os.environ["FAULT_WORKERS"] == "1":
        return
    pathlib.Path(me).touch()
    deadline = time.monotonic() + 30
    while not pathlib.Path(other).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
'''

OTHER = '''
import pytest
from helpers import meet, say
pytestmark = pytest.mark.requires_heavy_ram

def test_other_one(record_property):
    meet("other-1", "fault-1")
    record_property("pair", (1, 2))
    say("test_other_one")
    meet("other-2", "fault-2")

def test_other_two():
    say("test_other_two")
'''

HEAD = '''
import os, signal, subprocess, sys, time
import pytest
from helpers import MARK, SLEEPER, meet, say
pytestmark = pytest.mark.requires_heavy_ram

def test_before():
    meet("fault-1", "other-1")
    say("test_before")
    meet("fault-2", "other-2")
'''

TAIL = '''
def test_after():
    say("test_after")
'''


@dataclass
class Fault:
    body: str  # the test_fault function(s) between test_before and test_after
    outcomes: dict[str, str | None]  # test name -> outcome (None: none, as in-process after an exit)
    exit_code: int
    in_process: bool = True  # an in-process run survives this fault (so it has a baseline)
    conftest: str = ""
    output: list[str] = field(default_factory=list)  # text the terminal must show
    failure: str = ""  # text test_fault's failure must hold ({mark}: the run's marker)


ALL_PASS = {"test_before": "passed", "test_fault": "passed", "test_after": "passed",
            "test_other_one": "passed", "test_other_two": "passed"}

FAULTS: dict[str, Fault] = {
    # row 1: a daemon that double-forks into its own session and inherits every descriptor
    "daemon": Fault('''
def test_fault():
    say("test_fault")
    if os.fork() == 0:
        os.setsid()
        if os.fork():
            os._exit(0)
        os.execv(SLEEPER[0], SLEEPER)
''', ALL_PASS, 0, output=["*test_fault.py: killed leftover process pid *"]),
    # row 1: a new session with the descriptors inherited (the event pipe among them)
    "new_session_fds": Fault('''
def test_fault():
    say("test_fault")
    subprocess.Popen(SLEEPER, start_new_session=True, close_fds=False)
''', ALL_PASS, 0, output=["*test_fault.py: killed leftover process pid *"]),
    # row 5: setsid -f and 'cmd &' in a new session
    "detached": Fault('''
def test_fault():
    say("test_fault")
    subprocess.run(["setsid", "-f", *SLEEPER], check=True)
    subprocess.run(["sh", "-c", " ".join(SLEEPER[:2]) + " 'import time; time.sleep(1000)' " + MARK + " &"],
                   start_new_session=True, check=True)
''', ALL_PASS, 0, output=["*test_fault.py: killed leftover process pid *"]),
    # row 3: pytest.exit() ends the session: nothing further runs, exit code 2
    "exit": Fault('''
def test_fault():
    say("test_fault")
    pytest.exit("enough of this")
''', {"test_other_one": "passed", "test_other_two": "passed", "test_before": "passed",
      "test_fault": None, "test_after": None}, 2,
        output=["*!!! _pytest.outcomes.Exit: enough of this !!!*"]),
    # row 3: so does a KeyboardInterrupt raised by a test
    "keyboard_interrupt": Fault('''
def test_fault():
    say("test_fault")
    raise KeyboardInterrupt
''', {"test_other_one": "passed", "test_other_two": "passed", "test_before": "passed",
      "test_fault": None, "test_after": None}, 2,
        output=["*!!! KeyboardInterrupt !!!*", "*test_fault.py:*: KeyboardInterrupt"]),
    # a crash costs one test; the rest of the module runs in a fresh child
    "crash": Fault('''
def test_fault():
    say("test_fault")
    sys.stdout.flush()
    os.kill(os.getpid(), signal.SIGSEGV)
''', {**ALL_PASS, "test_fault": "failed"}, 1, in_process=False,
        output=["*child process for test_fault.py died with SIGSEGV during test_fault.py::test_fault*"]),
    # row 2: output of tests running at the same time in two children stays with each test
    "interleaved": Fault('''
def test_fault():
    for _ in range(4):
        say("test_fault")
        time.sleep(0.05)
    assert 0, "fails, so its captured output is shown"
''', {**ALL_PASS, "test_fault": "failed"}, 1),
    # row 4: what a conftest hook wrote to stderr outside any test is in the crashed test's failure
    "hook_stderr_exit": Fault('''
def test_fault():
    os._exit(3)
''', {**ALL_PASS, "test_fault": "failed"}, 1, in_process=False, conftest='''
import sys
from helpers import MARK
def pytest_runtest_logstart(nodeid):
    if nodeid.endswith("test_fault") and "PYTEST_HEAVY_CHILD" in __import__("os").environ:
        sys.stderr.write(f"HOOK-{MARK}\\n")
''', failure="HOOK-{mark}"),
}

# Faults whose cells are all slow: crashes are covered in the default tier by test_isolation, and
# interleaved output is about two workers. Keeps this module's default-tier cost near 60 s on 2 cores.
ALL_SLOW = {"crash", "interleaved"}


def make_project(root: Path, fault: Fault) -> None:
    (root / "pytest.ini").write_text(INI)
    (root / "helpers.py").write_text(HELPERS)
    (root / "test_a_other.py").write_text(OTHER)
    (root / "test_fault.py").write_text(HEAD + fault.body + TAIL)
    if fault.conftest:
        (root / "conftest.py").write_text(fault.conftest)


def environment(mark: str, workers: int = 1) -> dict[str, str]:
    env = dict(os.environ, FAULT_MARK=mark, FAULT_WORKERS=str(workers),
               PYTEST_HEAVY_ASSUME="gpus=0,ram=16GiB")
    for key in ("CICD", "COVERAGE_FILE", "PYTEST_ADDOPTS"):
        env.pop(key, None)
    return env


def marked(mark: str) -> list[psutil.Process]:
    """Live processes whose environment or command line carries ``mark``."""
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                continue
            if mark in " ".join(proc.cmdline()) or proc.environ().get("FAULT_MARK") == mark:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def survivors(mark: str, bound: float = GONE_BOUND_S) -> list[str]:
    """Processes of the run still alive once they had ``bound`` seconds to go; killed, and named."""
    deadline = time.monotonic() + bound
    while (alive := marked(mark)) and time.monotonic() < deadline:
        time.sleep(0.2)
    names = []
    for proc in alive:
        try:
            names.append(f"{proc.pid} {' '.join(proc.cmdline())[:100]}")
            proc.kill()
        except psutil.Error:
            continue
    return names


@dataclass
class Cases:
    ids: list[str]  # test names, one per testcase element
    outcome: dict[str, str]
    out: dict[str, str]  # system-out + system-err
    failure: dict[str, str]  # the failure or error element's text
    properties: dict[str, dict[str, str]]


def read_junit(path: Path) -> Cases:
    cases = Cases([], {}, {}, {}, {})
    for tc in ET.parse(path).getroot().iter("testcase"):
        name = tc.get("name", "")
        if not name:  # junit's trace of a test that pytest.exit() interrupted, in-process as well
            continue
        cases.ids.append(name)
        tags = [c.tag for c in tc if c.tag in ("failure", "error", "skipped")]
        cases.outcome[name] = {"failure": "failed", "error": "error", "skipped": "skipped"}.get(
            tags[0] if tags else "", "passed")
        cases.out[name] = "".join((c.text or "") for c in tc if c.tag in ("system-out", "system-err"))
        cases.failure[name] = "".join((c.text or "") for c in tc if c.tag in ("failure", "error"))
        cases.properties[name] = {p.get("name", ""): p.get("value", "") for p in tc.iter("property")}
    return cases


def run_pytest(root: Path, mark: str, *args: str, workers: int = 1) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly", "-rA",
         "--junitxml=junit.xml", *args],
        cwd=root, env=environment(mark, workers), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=RUN_BOUND_S, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout


def check_outcomes(fault: Fault, cases: Cases, out: str, workers: int = 1) -> None:
    assert len(cases.ids) == len(set(cases.ids)), f"a test has two outcomes: {cases.ids}\n{out}"
    got = {name: cases.outcome.get(name) for name in fault.outcomes}
    if workers > 1 and fault.exit_code == 2:
        # the other module ran at the same time: stopped by the interrupt, it may not have reached
        # its tests (none starts after it), or have finished them
        for name in ("test_other_one", "test_other_two"):
            if got[name] is None:
                got[name] = fault.outcomes[name]
    assert got == fault.outcomes, out
    assert set(cases.ids) <= set(fault.outcomes), out


def check_attribution(mark: str, cases: Cases) -> None:
    for name, text in cases.out.items():
        owners = set(re.findall(rf"(?:OUT|ERR)-{mark}-(\w+)", text))
        assert owners <= {name}, f"{name}'s captured output holds output of {owners - {name}}:\n{text}"


def test_in_process_baseline(tmp_path):
    """The expected outcomes and exit codes are those of one pytest process, for every fault it survives."""
    for name, fault in FAULTS.items():
        if not fault.in_process:
            continue
        root = tmp_path / name
        root.mkdir()
        make_project(root, fault)
        mark = f"heavyfault{uuid.uuid4().hex}"
        code, out = run_pytest(root, mark, "--heavy-isolate", "never")
        survivors(mark, bound=0)  # in one process nothing kills what a test leaves running: cleaned up here
        assert code == fault.exit_code, out
        check_outcomes(fault, read_junit(root / "junit.xml"), out)


def cell_params() -> list:
    params = []
    for name in FAULTS:
        for method in METHODS:
            for workers in (1, 2):
                marks = method_marks(method, slow=workers == 2 or name in ALL_SLOW)
                params.append(pytest.param(name, method, workers, marks=marks,
                                           id=f"{name}-{method}-w{workers}"))
    return params


@pytest.mark.parametrize(("name", "method", "workers"), cell_params())
def test_fault_cell(tmp_path, name, method, workers):
    fault = FAULTS[name]
    make_project(tmp_path, fault)
    mark = f"heavyfault{uuid.uuid4().hex}"
    code, out = run_pytest(tmp_path, mark, "--heavy-isolate", "always", "--heavy-start", method,
                           "--heavy-workers", str(workers), workers=workers)
    left = survivors(mark)
    assert not left, f"processes of the run outlived it: {left}\n{out}"
    assert code == fault.exit_code, out
    cases = read_junit(tmp_path / "junit.xml")
    check_outcomes(fault, cases, out, workers)
    check_attribution(mark, cases)
    if "test_other_one" in cases.properties:
        assert cases.properties["test_other_one"]["pair"] == "(1, 2)"
    if fault.failure:
        assert fault.failure.format(mark=mark) in cases.failure["test_fault"], out
    for pattern in fault.output:
        assert any(fnmatch.fnmatch(line, pattern) for line in out.splitlines()), (pattern, out)


KILLED_PARENT = '''
import pathlib, subprocess, time
import pytest
from helpers import SLEEPER
pytestmark = pytest.mark.requires_heavy_ram

def test_waits():
    subprocess.Popen(SLEEPER)
    subprocess.Popen(SLEEPER, start_new_session=True)
    pathlib.Path("started").touch()
    time.sleep(1000)
'''


@pytest.mark.parametrize("method", PARAMS)
def test_sigkilled_parent_leaves_no_process(tmp_path, method):
    """A SIGKILLed parent cannot write a report; what it guarantees instead: nothing it started,
    nor anything its tests started, outlives it."""
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "helpers.py").write_text(HELPERS)
    (tmp_path / "test_a_other.py").write_text(OTHER)
    (tmp_path / "test_waits.py").write_text(KILLED_PARENT)
    mark = f"heavyfault{uuid.uuid4().hex}"
    parent = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--heavy-isolate", "always",
         "--heavy-start", method], cwd=tmp_path, env=environment(mark), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + RUN_BOUND_S
        while not (tmp_path / "started").exists():
            assert parent.poll() is None and time.monotonic() < deadline, "the test never started"
            time.sleep(0.1)
        assert len(marked(mark)) >= 4  # the parent, its child and the two sleepers at least
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    left = survivors(mark)
    assert not left, f"processes outlived their SIGKILLed parent: {left}"


# --- row 6: smaller faults -------------------------------------------------------------------------

@pytest.mark.parametrize(("setting", "named"), [
    ("heavy_timeout_s = nan", "ini heavy_timeout_s = 'nan': expected a finite number"),
    ("heavy_ram_gib = nan", "ini heavy_ram_gib = 'nan': expected a finite number"),
    ("heavy_release_timeout_s = inf", "ini heavy_release_timeout_s = 'inf': expected a finite number"),
    ("heavy_example_timeout_s = -inf", "ini heavy_example_timeout_s = '-inf': expected a finite number"),
    ("--heavy-timeout=nan", "--heavy-timeout nan: expected a finite number >= 0 (0: no limit)"),
])
def test_non_finite_numbers_are_usage_errors_naming_the_key(heavy_pytester, setting, named):
    heavy_pytester.makepyfile("def test_x(): pass\n")
    if setting.startswith("--"):
        result = heavy_pytester.runpytest(setting)
    else:
        heavy_pytester.makeini(f"[pytest]\n{setting}\n")
        result = heavy_pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{named}*"])


def test_example_header_timeout_must_be_finite():
    from pytest_heavy.examples.header import HeaderError, parse_header

    with pytest.raises(HeaderError, match=r"timeout=1e\d+: expected a positive number of seconds"):
        parse_header(1, "timeout=1e999")


def test_a_preload_typo_is_one_line_once_and_the_template_goes_on(heavy_pytester):
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_preload = json no_such_module_xyz\n")
    body = ("import sys, pytest\npytestmark = pytest.mark.requires_heavy_ram\n"
            "def test_preloaded(): assert 'json' in sys.modules\n")
    heavy_pytester.makepyfile(test_p1=body, test_p2=body, test_p3=body)
    result = heavy_pytester.runpytest_subprocess()
    result.assert_outcomes(passed=3)
    out = result.stdout.str()
    named = [line for line in result.outlines if "no_such_module_xyz" in line]
    assert named == ["pytest-heavy: ini heavy_preload: the template process could not import "
                     "'no_such_module_xyz' (ModuleNotFoundError: No module named 'no_such_module_xyz'); "
                     "it goes on without it"], out
    assert "Traceback" not in out
    result.stdout.fnmatch_lines([f"test_p{i}.py *template*" for i in (1, 2, 3)])


EXAMPLE_DAEMON = '''# pytest:
import os, sys
sleeper = [sys.executable, "-c", "import time; time.sleep(1000)", os.environ["FAULT_MARK"]]
r, w = os.pipe()  # close-on-exec: EOF once the daemon has exec'd
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv(sleeper[0], sleeper)
    os.close(w)
    os.read(r, 1)
    os._exit(0)
os.close(w)
os.waitpid(pid, 0)
print("the example is done, its daemon runs")
'''


def test_an_examples_daemon_holding_its_output_is_killed_and_named(tmp_path):
    """An example runs as a process of its own, not as an isolated child: its daemon is found by
    the output pipes it inherited, and the run does not wait for them to close."""
    (tmp_path / "pytest.ini").write_text(INI)
    (tmp_path / "docs" / "examples").mkdir(parents=True)
    (tmp_path / "docs" / "examples" / "daemon.py").write_text(EXAMPLE_DAEMON)
    mark = f"heavyfault{uuid.uuid4().hex}"
    code, out = run_pytest(tmp_path, mark)
    left = survivors(mark)
    assert not left, f"the example's daemon outlived the run: {left}\n{out}"
    assert code == 0, out
    named = f"docs/examples/daemon.py::example: killed leftover process pid * {mark}*"
    assert any(fnmatch.fnmatch(line, named) for line in out.splitlines()), out
