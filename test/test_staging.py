"""Staging: the next heavy module's child starts and collects while the one before it runs, then waits
for its turn. Checked end to end: a test of the first module sees the second module imported by its
child before it ends; a staged child runs nothing after -x and leaves no process; --maxfail counts the
failures of the children before it; a module that needs a GPU is never staged."""

from __future__ import annotations

import json
import time

import psutil
import pytest

# Written by a child's import of the module (the parent imports it too, at collection: not recorded).
RECORD_IMPORT = """
import json, os, time
if os.environ.get("PYTEST_HEAVY_CHILD") == "1":
    with open("imports.jsonl", "a") as fh:
        fh.write(json.dumps({{"module": __name__, "pid": os.getpid(), "at": time.time()}}) + "\\n")
"""
WAITS_FOR_B = """
import json, os, time, pytest
pytestmark = pytest.mark.requires_heavy_ram

def b_imported():
    if not os.path.exists("imports.jsonl"):
        return False
    return any(json.loads(line)["module"] == "test_b" for line in open("imports.jsonl"))

def test_a():
    deadline = time.monotonic() + {wait}
    while not b_imported() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert b_imported() is {expected}
"""
MODULE_B = RECORD_IMPORT + """
import pytest
pytestmark = {marks}

def test_b():
    open("b-ran", "w").close()
"""

RAM = "pytest.mark.requires_heavy_ram"


@pytest.mark.parametrize("start", ["auto", "spawn"])
def test_the_next_module_is_collected_while_the_one_before_runs(heavy_pytester, start):
    """test_a passes only if test_b.py was imported by its own child while test_a ran."""
    heavy_pytester.makepyfile(test_a=WAITS_FOR_B.format(wait=60, expected=True),
                              test_b=MODULE_B.format(marks=RAM))
    result = heavy_pytester.runpytest_subprocess("--heavy-start", start, "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_a.py::test_a PASSED*", "*test_b.py::test_b PASSED*"])
    assert (heavy_pytester.path / "b-ran").exists()


FAILS = """
import pytest
pytestmark = pytest.mark.requires_heavy_ram

def test_a():
    assert {condition}
"""


def test_a_staged_child_runs_nothing_after_x_and_is_gone(heavy_pytester):
    heavy_pytester.makepyfile(test_a=WAITS_FOR_B.format(wait=60, expected=True).replace(
                                  "assert b_imported() is True", "assert not b_imported()"),
                              test_b=MODULE_B.format(marks=RAM))
    result = heavy_pytester.runpytest_subprocess("-x")
    result.assert_outcomes(failed=1)
    assert result.ret == 1
    assert not (heavy_pytester.path / "b-ran").exists()
    staged = [json.loads(line)["pid"] for line in (heavy_pytester.path / "imports.jsonl").open()]
    assert len(staged) == 1
    deadline = time.monotonic() + 10
    while psutil.pid_exists(staged[0]) and time.monotonic() < deadline:
        try:
            if psutil.Process(staged[0]).status() == psutil.STATUS_ZOMBIE:
                break
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    else:
        assert not psutil.pid_exists(staged[0]), "the staged child outlived the session"


def test_maxfail_counts_the_failures_of_the_children_before_a_staged_one(heavy_pytester):
    """A staged child was asked for its tests before the one before it failed: told how many failures
    are left only when its turn comes, it stops where one process would."""
    heavy_pytester.makepyfile(test_a=FAILS.format(condition="False"),
                              test_b=FAILS.format(condition="False").replace("def test_a", "def test_b")
                              + "\n\ndef test_c():\n    assert False\n")
    isolated = heavy_pytester.runpytest_subprocess("--maxfail=2", "-q")
    in_process = heavy_pytester.runpytest_subprocess("--maxfail=2", "-q", "--heavy-isolate", "never")
    isolated.assert_outcomes(failed=2)
    in_process.assert_outcomes(failed=2)
    assert "heavy modules (pytest-heavy)" in isolated.stdout.str()


def test_a_module_that_needs_a_gpu_is_not_staged(fake_gpu):
    """Its import may touch the GPU the running child uses: its child starts at its turn."""
    fake_gpu.makepyfile(test_a=WAITS_FOR_B.format(wait=2, expected=False),
                        test_b=MODULE_B.format(marks=f"[{RAM}, pytest.mark.requires_gpu]"))
    result = fake_gpu.runpytest_subprocess("-p", "pynvml")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["test_a.py *template*", "test_b.py *template*"])


# The parent's books on test_a's child take 2 s here, after that child exited.
SLOW_BOOKS = """
import time

def pytest_heavy_unit_finish(config, record):
    if record.unit.endswith("test_a.py"):
        time.sleep(2)
        with open("a-finished", "w") as fh:
            fh.write(repr(time.time()))
"""
STARTED = """
import time, pytest
pytestmark = pytest.mark.requires_heavy_ram

def test_{name}():
    with open("{name}-started", "w") as fh:
        fh.write(repr(time.time()))
"""


# test_a's child takes 2 s to end its session, after its last test.
SLOW_CHILD_END = """
import time

def pytest_sessionfinish(session):
    if [item.name for item in session.items] == ["test_a"]:
        time.sleep(2)
        with open("a-ended", "w") as fh:
            fh.write(repr(time.time()))
"""


@pytest.mark.parametrize(("conftest", "a_over"), [(SLOW_CHILD_END, "a-ended"), (SLOW_BOOKS, "a-finished")],
                         ids=["child-session-end", "parent-books"])
def test_the_next_child_runs_once_the_one_before_reported_its_last_test(heavy_pytester, conftest, a_over):
    """Not once that child has ended its session (plugins' sessionfinish, a coverage save or a
    snapshot write, runs beside the next module's tests, as in one process, where it runs once at
    the end), exited, and the parent closed its books on it; the reports still come in module order."""
    heavy_pytester.makeconftest(conftest)
    heavy_pytester.makepyfile(test_a=STARTED.format(name="a"), test_b=STARTED.format(name="b"))
    result = heavy_pytester.runpytest_subprocess("-v", "-p", "no:randomly")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*test_a.py::test_a PASSED*", "*test_b.py::test_b PASSED*"])
    started_b = float((heavy_pytester.path / "b-started").read_text())
    assert started_b < float((heavy_pytester.path / a_over).read_text())
