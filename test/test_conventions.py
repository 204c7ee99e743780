"""What a seasoned pytest user expects of a plugin and its command: argparse's exit statuses, quiet broken
pipes, no deprecated pytest API, a versioned JSON document, junit like an in-process run's, empty tiers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from importlib import metadata

import pytest

CLI = [sys.executable, "-m", "pytest_heavy.cli"]


def cli(pytester: pytest.Pytester, *args: str, env: dict[str, str] | None = None,
        stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], cwd=pytester.path, env=env, stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=120)


def test_version(pytester: pytest.Pytester) -> None:
    done = cli(pytester, "--version")
    assert done.returncode == 0 and done.stdout == f"pytest-heavy {metadata.version('pytest-heavy')}\n"


@pytest.mark.parametrize("args", [
    ("bogus",),
    ("doctor", "-o", "heavy_ram_gib=lots"),
    ("doctor", "--heavy-assume", "gpus=many"),
    ("split",),
    ("split", "--merge-junit", "only-out.xml"),
    ("tier", "nightly"),
    ("mps", "status", "--nope"),
])
def test_usage_errors_exit_2(pytester: pytest.Pytester, args: tuple[str, ...]) -> None:
    done = cli(pytester, *args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.strip() and "Traceback" not in done.stderr


@pytest.mark.parametrize("args", [("doctor",), ("doctor", "--json"), ("mps", "status"), ("--version",),
                                  ("--help",)])
@pytest.mark.parametrize("unbuffered", [False, True])
def test_a_reader_that_left_ends_the_command_quietly(pytester: pytest.Pytester, args: tuple[str, ...],
                                                     unbuffered: bool) -> None:
    """`env -u PYTHONUNBUFFERED pytest-heavy doctor | true`: the pipe is closed before anything is written,
    so buffered output fails at the final flush and unbuffered output at the first print."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = cli(pytester, *args, env=env, stdout=write_end)
    finally:
        os.close(write_end)
    assert done.returncode == 0 and done.stderr == "", done.stderr


def test_doctor_uses_no_deprecated_pytest_api(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nheavy_enabled = true\n")
    done = cli(pytester, "doctor", env={**os.environ, "PYTHONWARNINGS": "error"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert "markers here:" in done.stdout


def test_doctor_json_schema_and_enabled_state(pytester: pytest.Pytester,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_HEAVY", raising=False)
    off = json.loads(cli(pytester, "doctor", "--json").stdout)
    assert off["schema"] == 1 and off["enabled"] is False
    text = cli(pytester, "doctor").stdout
    assert text.startswith("pytest-heavy is off here (no heavy_* key in the pytest configuration)")
    pytester.makeini("[pytest]\nheavy_enabled = true\n")
    on = json.loads(cli(pytester, "doctor", "--json").stdout)
    assert on["enabled"] is True and on["enabled_by"] == "heavy_enabled = true"
    assert cli(pytester, "doctor").stdout.startswith("pytest-heavy: on here (heavy_enabled = true)")


QUALITATIVE_FREE = """
import pytest

def test_fast():
    pass

@pytest.mark.slow
def test_slow():
    assert 0, "slow and broken"
"""


def test_an_empty_tier_exits_0_with_one_line(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nheavy_enabled = true\n")
    pytester.makepyfile(QUALITATIVE_FREE)
    empty = cli(pytester, "tier", "qualitative", "--", "-p", "no:cacheprovider")
    assert empty.returncode == 0, empty.stdout
    assert empty.stdout.splitlines()[-1] == ("pytest-heavy tier qualitative: the tier is empty here "
                                             "(no test selected); exit 0")
    plain = pytester.runpytest_subprocess("-m", "qualitative", "-p", "no:cacheprovider")
    assert plain.ret == pytest.ExitCode.NO_TESTS_COLLECTED  # pytest itself keeps its exit 5
    slow = cli(pytester, "tier", "slow", "--", "-p", "no:cacheprovider")
    assert slow.returncode == 1 and "1 failed" in slow.stdout and "tier is empty" not in slow.stdout
    fast = cli(pytester, "tier", "fast", "--", "-p", "no:cacheprovider", "-q")
    assert fast.returncode == 0 and "1 passed, 1 deselected" in fast.stdout


HEAVY_MODULE = """
import pytest

pytestmark = pytest.mark.requires_heavy_ram

def test_one():
    pass
"""


def junit_properties(path: str) -> dict[str, dict[str, str]]:
    root = ET.parse(path).getroot()
    return {tc.get("name", ""): {p.get("name", ""): p.get("value", "") for p in tc.iter("property")}
            for tc in root.iter("testcase")}


@pytest.mark.parametrize("ask", [(), ("--heavy-junit-properties",), ("-o", "heavy_junit_properties=true")])
def test_junit_properties_only_when_asked(heavy_pytester: pytest.Pytester, ask: tuple[str, ...]) -> None:
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\njunit_family = xunit2\n")
    heavy_pytester.makepyfile(test_a=HEAVY_MODULE, test_b=HEAVY_MODULE)
    result = heavy_pytester.runpytest_subprocess("--heavy-isolate", "always", "--junitxml=out.xml", *ask)
    result.assert_outcomes(passed=2)
    props = junit_properties(str(heavy_pytester.path / "out.xml"))
    if ask:  # a child that ends before the monitor's first sample reports 0 MiB: the key is what counts
        assert all(int(p["heavy_module_peak_rss_mib"]) >= 0 for p in props.values()), props
    else:
        assert props == {"test_one": {}}
        assert "warnings summary" not in result.stdout.str()  # xunit2 warns about properties: none here


def module(fail: str) -> str:
    return f"""
import pytest

pytestmark = pytest.mark.requires_heavy_ram

def test_ok():
    pass

def test_{fail}():
    assert 0
"""


def run_order(pytester: pytest.Pytester, *args: str) -> list[str]:
    result = pytester.runpytest_subprocess("-v", "-p", "no:randomly", *args)
    return [line.split(" ")[0] for line in result.outlines if line.startswith("test_") and "::" in line]


def test_failed_first_order_with_isolation_is_the_documented_one(heavy_pytester: pytest.Pytester) -> None:
    """--ff: in-process, every failed test first; isolated, each heavy module whole where its first
    test falls (docs/isolation.md, "When"). The parent module's tests keep pytest's order."""
    heavy_pytester.makepyfile(test_a=module("a_fails"), test_b=module("b_fails"), test_c="""
def test_c_fails():
    assert 0

def test_c_ok():
    pass
""")
    first = run_order(heavy_pytester, "--heavy-isolate", "never")
    assert first == ["test_a.py::test_ok", "test_a.py::test_a_fails", "test_b.py::test_ok",
                     "test_b.py::test_b_fails", "test_c.py::test_c_fails", "test_c.py::test_c_ok"]
    assert run_order(heavy_pytester, "--ff", "--heavy-isolate", "never") == [
        "test_a.py::test_a_fails", "test_b.py::test_b_fails", "test_c.py::test_c_fails",
        "test_a.py::test_ok", "test_b.py::test_ok", "test_c.py::test_c_ok"]
    assert run_order(heavy_pytester, "--ff", "--heavy-isolate", "always") == [
        "test_a.py::test_a_fails", "test_a.py::test_ok", "test_b.py::test_b_fails", "test_b.py::test_ok",
        "test_c.py::test_c_fails", "test_c.py::test_c_ok"]


def test_coverage_run_measures_the_plugins_import_time_lines(heavy_pytester: pytest.Pytester) -> None:
    """`make coverage` is `coverage run -m pytest` + combine: no warning, and pytest-heavy's own module-level
    lines (run when pytest loads the plugin, before pytest-cov could start) are measured."""
    import pytest_heavy.plugin

    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\n[coverage:run]\nsource = pytest_heavy\n"
                           "patch = subprocess, _exit, fork\nsigterm = true\n")
    heavy_pytester.makepyfile(test_a=HEAVY_MODULE, test_b=HEAVY_MODULE)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVERAGE_")}
    env["COVERAGE_RCFILE"] = str(heavy_pytester.path / "tox.ini")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "coverage", *args], cwd=heavy_pytester.path, env=env,
                              capture_output=True, text=True, timeout=300)

    measured = run("run", "-m", "pytest", "--heavy-isolate", "always", "-p", "no:randomly")
    assert measured.returncode == 0 and "2 passed" in measured.stdout, measured.stdout + measured.stderr
    assert "CoverageWarning" not in measured.stdout + measured.stderr
    combined = run("combine", "-q")
    assert combined.returncode == 0 and "CoverageWarning" not in combined.stdout + combined.stderr
    assert run("json", "-q", "-o", "cov.json").returncode == 0
    files = json.loads((heavy_pytester.path / "cov.json").read_text())["files"]
    [plugin] = [v for k, v in files.items() if k.endswith(os.path.join("pytest_heavy", "plugin.py"))]
    source = open(pytest_heavy.plugin.__file__, encoding="utf-8").read().splitlines()
    configure = source.index("def pytest_configure(config: pytest.Config) -> None:") + 1
    assert configure in plugin["executed_lines"]  # the def statement runs at import time


def test_doctor_plan_works_where_the_project_is_off(pytester: pytest.Pytester,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_HEAVY", raising=False)
    monkeypatch.setenv("PYTEST_HEAVY_ASSUME", "gpus=0,ram=64GiB")  # not --heavy-assume: that turns it on
    pytester.makepyfile(test_a=HEAVY_MODULE, test_b=HEAVY_MODULE)
    done = cli(pytester, "doctor", "--plan")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("plan for --heavy-workers auto on:")
