"""pytest-heavy stays out of the way until a project (a ``heavy_*`` ini key) or a run (a ``--heavy-*``
option, ``PYTEST_HEAVY=1``) opts in; and its ini keys take strings and native TOML values alike."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.usefixtures("no_other_plugins")

# A project that knows nothing of pytest-heavy and uses the same marker names for its own purposes, gated
# by its own conftest (the pytest docs' --runslow pattern, plus a --run-slow twin and a GPU switch).
OWN_CONFTEST = """
import os
import pytest

# The session's process: every test must run in it (no isolation). Children inherit the environment.
os.environ["OWN_SESSION_PID"] = os.environ["OWN_SESSION_PID"] or str(os.getpid())

def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False)
    parser.addoption("--run-slow", action="store_true", default=False)

def pytest_configure(config):
    for name in ("slow", "requires_gpu", "requires_heavy_ram", "qualitative", "huggingface"):
        config.addinivalue_line("markers", f"{name}: this project's own marker")

def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--runslow") or config.getoption("--run-slow")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(pytest.mark.skip(reason="project: needs --runslow"))
        if "requires_gpu" in item.keywords and not os.environ.get("PROJECT_HAS_GPU"):
            item.add_marker(pytest.mark.skip(reason="project: no GPU flag"))
"""

OWN_TESTS = {
    "test_plain.py": """
import pytest

def test_fast():
    pass

@pytest.mark.slow
def test_slow():
    pass

@pytest.mark.qualitative
def test_reads_well():
    pass

@pytest.mark.requires_gpu
def test_gpu():
    pass

@pytest.mark.huggingface
def test_hf_runs_on_cpu_here():
    pass
""",
    "test_big_a.py": """
import os
import pytest

pytestmark = pytest.mark.requires_heavy_ram

def test_in_the_session_process():
    assert os.getpid() == int(os.environ["OWN_SESSION_PID"])
""",
    "test_big_b.py": """
import os
import pytest

@pytest.mark.requires_heavy_ram
def test_in_the_session_process_too():
    assert os.getpid() == int(os.environ["OWN_SESSION_PID"])
""",
}


def normalized_junit(pytester: pytest.Pytester, *args: str) -> str:
    """Run pytest with a junit file; return the XML without its run-dependent attributes."""
    xml = pytester.path / "junit.xml"
    pytester.runpytest("-p", "no:cacheprovider", f"--junitxml={xml}", *args)
    return re.sub(r' (time|timestamp|hostname)="[^"]*"', "", xml.read_text(encoding="utf-8"))


@pytest.fixture
def own_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for name in ("PYTEST_HEAVY", "PYTEST_HEAVY_ASSUME", "CICD", "PROJECT_HAS_GPU"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OWN_SESSION_PID", "")  # set by the session's conftest, restored after the test
    pytester.makeconftest(OWN_CONFTEST)
    pytester.makepyfile(**OWN_TESTS)
    pytester.makeini("[pytest]\njunit_family = xunit2\n")
    return pytester


@pytest.mark.parametrize("args, env", [
    ((), {}),
    (("--runslow",), {}),
    (("--run-slow", "-m", "not qualitative"), {"CICD": "1"}),
    (("-m", "slow", "--run-slow"), {"PROJECT_HAS_GPU": "1"}),
])
def test_installed_but_not_enabled_changes_nothing(own_project: pytest.Pytester,
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   args: tuple[str, ...], env: dict[str, str]) -> None:
    """Same junit with the plugin installed (not enabled) as without it, whatever the project's own
    options, markers, -m expressions, and CICD=1."""
    for key, val in env.items():
        monkeypatch.setenv(key, val)
    without = normalized_junit(own_project, "-p", "no:heavy", *args)
    with_plugin = normalized_junit(own_project, *args)
    assert with_plugin == without
    assert 'failures="0"' in with_plugin and 'errors="0"' in with_plugin
    result = own_project.runpytest("-p", "no:cacheprovider", *args)
    heavy_lines = [line for line in result.outlines
                   if "heavy" in line.lower() and not line.startswith("plugins:")]
    assert heavy_lines == [
        "heavy: off (no heavy_* key in the pytest configuration); enable with heavy_enabled = true in the "
        "pytest configuration, a --heavy-* option or PYTEST_HEAVY=1"
    ], result.outlines


def test_enabled_in_the_same_project_takes_over_its_markers(own_project: pytest.Pytester) -> None:
    """The fixture's project does change once enabled: a check that the comparison above can fail."""
    own_project.makeini("[pytest]\nheavy_enabled = true\nheavy_ram_gib = 1\n")
    result = own_project.runpytest("-p", "no:cacheprovider", "--heavy-assume", "gpus=0,ram=16GiB",
                                   "--runslow")
    # slow deselected by the plugin, huggingface gated as a GPU marker, the two requires_heavy_ram
    # modules isolated: their pid check fails
    result.assert_outcomes(passed=2, skipped=2, failed=2, deselected=1)


SLOW_SUITE = """
import pytest

def test_fast():
    pass

@pytest.mark.slow
def test_slow():
    pass
"""


@pytest.mark.parametrize("ini, args, env, on", [
    ("", (), {}, False),
    ("heavy_enabled = true", (), {}, True),
    ("heavy_ram_gib = 4", (), {}, True),
    ("heavy_examples_dirs = examples", (), {}, True),
    ("heavy_ram_gib = 4\nheavy_enabled = false", (), {}, False),
    ("", ("-o", "heavy_enabled=true"), {}, True),
    ("", ("--heavy-isolate", "never"), {}, True),
    ("", ("--heavy-workers", "1"), {}, True),
    ("", (), {"PYTEST_HEAVY": "1"}, True),
    ("heavy_ram_gib = 4", (), {"PYTEST_HEAVY": "0"}, False),
    ("heavy_enabled = false", ("--heavy-run-slow",), {}, True),  # the run's explicit option wins
    ("", (), {"PYTEST_ADDOPTS": "--heavy-isolate=never"}, True),
])
def test_opt_in_matrix(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ini: str,
                       args: tuple[str, ...], env: dict[str, str], on: bool) -> None:
    for name in ("PYTEST_HEAVY", "CICD"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PYTEST_HEAVY_ASSUME", "gpus=0,ram=16GiB")
    for key, val in env.items():
        monkeypatch.setenv(key, val, prepend=" " if key == "PYTEST_ADDOPTS" else None)
    pytester.makeini(f"[pytest]\n{ini}\n")
    pytester.makepyfile(SLOW_SUITE)
    result = pytester.runpytest("-p", "no:cacheprovider", *args)
    header = [line for line in result.outlines if line.startswith("heavy")]
    if not on:
        result.assert_outcomes(passed=2)
        assert len(header) == 1 and header[0].startswith("heavy: off ("), result.outlines
    elif "--heavy-run-slow" in args:
        result.assert_outcomes(passed=2)
        assert "heavy tier: default tier; slow: run" in header
    else:
        result.assert_outcomes(passed=1, deselected=1)
        assert header[0].startswith("heavy: no GPU")
        assert "heavy tier: default tier; slow: deselected" in header


def test_bad_enabled_value_names_the_key(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_HEAVY", raising=False)
    pytester.makeini("[pytest]\nheavy_enabled = maybe\n")
    pytester.makepyfile(SLOW_SUITE)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*heavy_enabled = 'maybe': expected true or false*"])


GATED_SUITE = """
import pytest

@pytest.mark.requires_heavy_ram
def test_big():
    pass

@pytest.mark.slow
def test_slow():
    pass
"""

NATIVE = """heavy_ram_gib = 64
heavy_skip_slow_by_default = false
heavy_timeout_s = 1.5
heavy_vram_tolerance_mib = 128
heavy_isolate_markers = ["requires_heavy_ram"]
"""
STRINGS = """heavy_ram_gib = "64"
heavy_skip_slow_by_default = "false"
heavy_timeout_s = "1.5"
heavy_vram_tolerance_mib = "128"
heavy_isolate_markers = ["requires_heavy_ram"]
"""

# Where a TOML table of pytest settings can live, on this pytest: the ini_options table everywhere, the
# native table and pytest.toml from pytest 9 on.
TOML_FILES = [("pyproject.toml", "[tool.pytest.ini_options]\n")]
if pytest.version_tuple >= (9,):
    TOML_FILES += [("pyproject.toml", "[tool.pytest]\n"), ("pytest.toml", "[pytest]\n")]


@pytest.mark.parametrize("values", [NATIVE, STRINGS], ids=["native", "strings"])
@pytest.mark.parametrize("filename, table", TOML_FILES, ids=[f"{f}:{t.strip()}" for f, t in TOML_FILES])
def test_toml_numbers_and_booleans(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                   filename: str, table: str, values: str) -> None:
    """heavy_ram_gib = 64 and heavy_skip_slow_by_default = false, written as TOML values or strings."""
    monkeypatch.delenv("PYTEST_HEAVY", raising=False)
    monkeypatch.setenv("PYTEST_HEAVY_ASSUME", "gpus=0,ram=16GiB")
    (pytester.path / filename).write_text(table + values, encoding="utf-8")
    pytester.makepyfile(GATED_SUITE)
    result = pytester.runpytest("-p", "no:cacheprovider", "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*needs 64 GiB RAM (requires_heavy_ram, heavy_ram_gib)*"])


@pytest.mark.parametrize("filename, table", TOML_FILES, ids=[f"{f}:{t.strip()}" for f, t in TOML_FILES])
def test_toml_wrong_kind_names_the_key(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                       filename: str, table: str) -> None:
    monkeypatch.delenv("PYTEST_HEAVY", raising=False)
    (pytester.path / filename).write_text(table + "heavy_ram_gib = true\n", encoding="utf-8")
    pytester.makepyfile(GATED_SUITE)
    result = pytester.runpytest("-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*heavy_ram_gib = *rue*: expected a number*"])
