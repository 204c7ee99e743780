"""An opted-in session with nothing heavy to do pays for little: it imports none of the isolation
machinery, and forks no template once an earlier session here has shown it has no test to isolate
(docs/benchmarks/idle.md measures what is left)."""

from __future__ import annotations

import ast
import json

import pytest

# Written at the session's end: every pytest_heavy module this pytest process imported.
CONFTEST = """
import sys

def pytest_sessionfinish(session):
    loaded = sorted(name for name in sys.modules if name.startswith("pytest_heavy"))
    with open("modules.json", "w") as fh:
        fh.write(repr(loaded))
"""
LIGHT = """
import pytest

@pytest.mark.parametrize("n", range(3))
def test_light(n):
    assert n >= 0

@pytest.mark.slow
def test_slow():
    pass
"""
HEAVY = """
import pytest

pytestmark = pytest.mark.requires_heavy_ram

def test_heavy():
    pass
"""
# What only a session that may start children, splits, or writes a heavy table needs.
NOT_IDLE = ("pytest_heavy.isolation", "pytest_heavy.report", "pytest_heavy.split.slurm", "pytest_heavy.procs")


def loaded(pytester: pytest.Pytester) -> list[str]:
    return ast.literal_eval((pytester.path / "modules.json").read_text())


@pytest.fixture
def idle_project(heavy_pytester: pytest.Pytester) -> pytest.Pytester:
    heavy_pytester.makeini("[pytest]\nheavy_enabled = true\nheavy_ram_gib = 4\n")
    heavy_pytester.makeconftest(CONFTEST)
    heavy_pytester.makepyfile(test_light=LIGHT)
    return heavy_pytester


def test_an_idle_session_imports_no_isolation_module(idle_project: pytest.Pytester) -> None:
    first = idle_project.runpytest_subprocess("-q")  # the first session here forks the template
    first.assert_outcomes(passed=3, deselected=1)
    assert "pytest_heavy.isolation.launch.template" in loaded(idle_project)

    assert idle_project.runpytest_subprocess("--collect-only", "-q").ret == 0
    assert not [m for m in loaded(idle_project) if m.startswith(NOT_IDLE)], loaded(idle_project)
    idle_project.runpytest_subprocess("-q").assert_outcomes(passed=3, deselected=1)
    # The thread baseline (forks are checked against it) is taken at session start whatever comes.
    baseline = ("pytest_heavy.isolation", "pytest_heavy.isolation.threads")
    assert not [m for m in loaded(idle_project) if m.startswith(NOT_IDLE) and m not in baseline], \
        loaded(idle_project)


def test_the_template_comes_back_once_a_session_has_a_test_to_isolate(idle_project: pytest.Pytester) -> None:
    idle_project.runpytest_subprocess("-q").assert_outcomes(passed=3, deselected=1)
    idle_project.makepyfile(test_heavy_a=HEAVY, test_heavy_b=HEAVY)
    starts = []
    for _ in range(2):
        result = idle_project.runpytest_subprocess("-q", "--heavy-report", "report.json")
        result.assert_outcomes(passed=5, deselected=1)
        rows = json.loads((idle_project.path / "report.json").read_text())["modules"]
        starts.append([(row["start_method"], row["start_note"].split(" (")[0]) for row in rows])
    # This once, said under the heavy table (for the first child that could not start as chosen).
    assert starts[0] == [("fork", "no template process"), ("fork", "")], starts
    assert starts[1] == [("template", ""), ("template", "")], starts
