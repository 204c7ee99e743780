"""Coverage with pytest-cov: lines that only isolated children and examples execute are in the report.

The generated project carries the configuration docs/coverage.md asks users for (coverage's ``patch`` for
subprocess, ``_exit`` and ``fork``); without it those lines are missing, which the last test shows, so
the others cannot pass by accident.
"""

from __future__ import annotations

import json

import pytest

from methods import PARAMS

LIBRARY = """
def used_by_a():
    return "a"


def used_by_b():
    return "b"


def used_by_example():
    return "example"
"""
HEAVY = """
import pytest, mylib
pytestmark = pytest.mark.requires_gpu_isolation
def test_it(): assert mylib.used_by_{0}() == "{0}"
"""
EXAMPLE = "# pytest:\nimport mylib\nassert mylib.used_by_example() == 'example'\n"
COVERAGE_INI = "[coverage:run]\npatch = subprocess, _exit, fork\nsigterm = true\n"


@pytest.fixture
def project(heavy_pytester: pytest.Pytester) -> pytest.Pytester:
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_examples_dirs = examples\n" + COVERAGE_INI)
    heavy_pytester.makepyfile(mylib=LIBRARY, test_a=HEAVY.format("a"), test_b=HEAVY.format("b"))
    (heavy_pytester.mkdir("examples") / "use_lib.py").write_text(EXAMPLE)
    return heavy_pytester


def missing_lines(pytester: pytest.Pytester, *args: str) -> list[int]:
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--cov=mylib", "--cov-report=json",
                                           *args)
    result.assert_outcomes(passed=3)
    report = json.loads((pytester.path / "coverage.json").read_text())
    return report["files"]["mylib.py"]["missing_lines"]


@pytest.mark.parametrize("method", PARAMS)
def test_children_and_examples_are_measured(project: pytest.Pytester, method: str) -> None:
    assert missing_lines(project, "--heavy-start", method) == []
    assert not list(project.path.glob(".coverage.*"))  # every child's data file was combined


def test_without_the_patch_settings_children_are_not_measured(project: pytest.Pytester) -> None:
    project.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_examples_dirs = examples\n")
    assert missing_lines(project, "--heavy-start", "spawn") == [2, 6, 10]
