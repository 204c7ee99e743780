"""The controller's decisions, without processes: a scripted launcher (``test/fakes/scripted_launcher.py``)
stands in for the children through the ``pytest_heavy_make_launcher`` hook, so restart after a crash,
``-x``, tests a child did not collect and a child that dies before its first test are checked exactly
and fast. The same paths run with real children in test_isolation.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FAKES = Path(__file__).resolve().parent / "fakes"
HEAVY = "import pytest\npytestmark = pytest.mark.requires_heavy_ram\n\n"


@pytest.fixture
def scripted(heavy_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.setenv("SCRIPTED_LAUNCHER_LOG", str(heavy_pytester.path / "requests.jsonl"))
    heavy_pytester.makeconftest("pytest_plugins = ['scripted_launcher']\n")
    return heavy_pytester


def requests(pytester: pytest.Pytester) -> list[list[str]]:
    path = pytester.path / "requests.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def heavy_table_row(stdout: str, module: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(module + "  "))  # the padded table


def test_crash_fails_that_test_and_a_fresh_child_runs_the_rest(scripted):
    scripted.makepyfile(test_a=HEAVY + "def test_one(): pass\ndef test_crash(): pass\n"
                                       "def test_three(): pass\n",
                        test_b=HEAVY + "def test_b(): pass\n")
    result = scripted.runpytest("-rA")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["_*_ test_crash _*_",
                                 "child process for test_a.py died with SIGSEGV during test_a.py::test_crash",
                                 "last lines of its stderr:", "Fatal Python error: Segmentation fault"])
    assert requests(scripted) == [["test_a.py::test_one", "test_a.py::test_crash", "test_a.py::test_three"],
                                  ["test_a.py::test_three"], ["test_b.py::test_b"]]
    row = heavy_table_row(result.stdout.str(), "test_a.py")
    assert "SIGSEGV, exit 0" in row
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_a_child_that_dies_before_any_test_is_not_restarted(scripted):
    scripted.makepyfile(test_a=HEAVY + "def test_early(): pass\ndef test_two(): pass\n",
                        test_b=HEAVY + "def test_b(): pass\n")
    result = scripted.runpytest("-rA")
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(["*test_a.py::test_two was not run: the child process "
                                 "for test_a.py ended (SIGSEGV) before reaching it"])
    assert requests(scripted)[0] == ["test_a.py::test_early", "test_a.py::test_two"]
    assert len(requests(scripted)) == 2  # test_a once (no progress: no restart), test_b once


def test_exitfirst_stops_the_session_and_starts_no_further_child(scripted):
    scripted.makepyfile(test_a=HEAVY + "def test_fail(): pass\ndef test_two(): pass\n",
                        test_b=HEAVY + "def test_b(): pass\n")
    result = scripted.runpytest("-x")
    result.assert_outcomes(failed=1)
    assert requests(scripted) == [["test_a.py::test_fail", "test_a.py::test_two"]]
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_maxfail_counts_failures_across_children(scripted):
    scripted.makepyfile(test_a=HEAVY + "def test_fail_a(): pass\ndef test_a2(): pass\n",
                        test_b=HEAVY + "def test_fail_b(): pass\ndef test_b2(): pass\n",
                        test_c=HEAVY + "def test_c(): pass\n")
    result = scripted.runpytest("--maxfail", "2")
    result.assert_outcomes(passed=1, failed=2)
    assert [len(r) for r in requests(scripted)] == [2, 2]  # test_c's child never starts


def test_a_test_the_child_did_not_collect_fails_with_the_reason(scripted):
    scripted.makepyfile(test_a=HEAVY + "def test_missing(): pass\ndef test_two(): pass\n",
                        test_b=HEAVY + "def test_b(): pass\n")
    result = scripted.runpytest("-rA")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*test_a.py::test_missing was not collected in the child process for "
                                 "test_a.py (collection differs between the parent and the child)*"])
