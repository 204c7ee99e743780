"""Fidelity of isolated runs, second round: what a test sees of the session (its invocation, the
debugger, the faulthandler's dump) and the session-level results that plugins gather (warnings,
junit properties, snapshots, benchmarks). Each case compares ``--heavy-isolate never`` with
``always`` under every start method (see test_fidelity.py's ``parity``)."""

import json
import os
import select
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

from methods import METHODS, PARAMS, marks
from test_fidelity import heavy, parity

# --- invocation_params ------------------------------------------------------------------------------

INVOCATION = """
def test_args(pytestconfig, record_property):
    record_property("args", repr(pytestconfig.invocation_params.args))
    record_property("dir", str(pytestconfig.invocation_params.dir))
"""


@pytest.mark.parametrize("method", PARAMS)
def test_invocation_params_are_the_parents(heavy_pytester, method):
    """A spawned or template child was configured from arguments of its own (rootdir, ini file):
    a test read those, not the command line the user typed."""
    heavy_pytester.makepyfile(test_h1=heavy(INVOCATION), test_h2=heavy(INVOCATION), test_l=INVOCATION)
    parity(heavy_pytester, method, "-o", "junit_family=xunit1")
    seen = {(p.get("name"), p.get("value"))
            for p in ET.parse(heavy_pytester.path / "iso.xml").getroot().iter("property")}
    args = {value for name, value in seen if name == "args"}
    assert len(seen) == 2 and len(args) == 1 and f"'{method}'" in args.pop()


# --- terminal summary ------------------------------------------------------------------------------

SUMMARY_CONFTEST = """
import os

def pytest_terminal_summary(terminalreporter):
    with open("summaries.txt", "a") as out:
        out.write(f"{os.getpid()}\\n")
    terminalreporter.write_line("summary from the conftest")
"""


@pytest.mark.parametrize("method", PARAMS)
def test_terminal_summary_hooks_run_once_in_the_parent(heavy_pytester, method):
    """A spawned or template child ended its session with every plugin's terminal summary too,
    written to its silenced terminal: wasted work (hypothesis's imports all of hypothesis in each
    child) and, for a summary with side effects, one per child instead of one per session."""
    heavy_pytester.makeconftest(SUMMARY_CONFTEST)
    heavy_pytester.makepyfile(test_h1=heavy("def test_a():\n    pass\n"),
                              test_h2=heavy("def test_b():\n    pass\n"))
    summaries = heavy_pytester.path / "summaries.txt"
    base, iso = parity(heavy_pytester, method)
    assert len(summaries.read_text().split()) == 2  # one line per session: base, then iso
    assert iso.stdout.lines.count("summary from the conftest") == 1


# --- config-time warnings -----------------------------------------------------------------------------

WARNS = heavy("""
import warnings

def test_warns():
    warnings.warn("from the test")
""")


def warnings_summary(result):
    text = result.stdout.str()
    return text[text.index("warnings summary"):text.index("-- Docs")]


@pytest.mark.parametrize("method", PARAMS)
def test_config_warnings_counted_once(heavy_pytester, method):
    """A spawned or template child validates the ini file again when it collects its module: the
    unknown key's PytestConfigWarning came back from every child (listed and counted once per child)."""
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\nunknown_key_xyz = 1\n")
    heavy_pytester.makeconftest("import warnings\nwarnings.warn('from the conftest')\n")
    heavy_pytester.makepyfile(test_h1=WARNS, test_h2=WARNS)
    base, iso = parity(heavy_pytester, method)
    assert warnings_summary(iso) == warnings_summary(base)
    assert iso.stdout.str().count("Unknown config option: unknown_key_xyz") == 1
    assert "2 passed, 4 warnings" in iso.outlines[-1]


# --- the terminal: faulthandler_timeout and breakpoint() ------------------------------------------------

SLOW = heavy("""
import time

def test_slow():
    time.sleep(2)
""")


# fork kept the dump (its copy of stderr is the parent's): that cell runs in the slow tier
@pytest.mark.parametrize("method", [pytest.param(m, marks=marks(m, slow=m == "fork"))
                                    for m in METHODS])
def test_faulthandler_timeout_dump_reaches_stderr(heavy_pytester, method):
    """pytest points the faulthandler_timeout dump at a copy of stderr made at configure time: in a
    spawned or template child that copy led to a pipe the parent only reads when the child dies."""
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\nfaulthandler_timeout = 1\n")
    heavy_pytester.makepyfile(test_h1=SLOW)
    base, iso = parity(heavy_pytester, method)
    for result in (base, iso):
        err = result.stderr.str()
        assert "Timeout (0:00:01)!" in err and 'test_h1.py", line 7 in test_slow' in err


BREAKPOINT = heavy("""
def test_bp():
    x = 41
    breakpoint()
    assert x == 41

def test_after():
    print("after")
""")


PROMPT_WAIT_S = 120  # a generous bound on a session's start (a child's import of pytest on a busy machine)


def session_lines(lines):
    """From 'collected' to the session's last line (its time left out), the heavy table left out."""
    lines = lines[next(i for i, line in enumerate(lines) if "collected" in line):]
    table = [i for i, line in enumerate(lines) if "heavy modules (pytest-heavy)" in line]
    return [*lines[:table[0] if table else -1], lines[-1].rsplit(" in ", 1)[0]]


def run_with_pdb(pytester, *args):
    """A pytest session driven as a user would: the debugger's commands are typed once its prompt
    shows (a prompt that never shows fails the test instead of waiting for it)."""
    proc = subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=pytester.path,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = b""
    while b"(Pdb) " not in out:
        if not select.select([proc.stdout], [], [], PROMPT_WAIT_S)[0] or not (chunk := os.read(
                proc.stdout.fileno(), 65536)):
            proc.kill()
            pytest.fail(f"no pdb prompt:\n{(out + proc.communicate()[0]).decode()}")
        out += chunk
    rest, _ = proc.communicate(b"p x + 1\nc\n", timeout=PROMPT_WAIT_S)
    return proc.returncode, (out + rest).decode().splitlines()


@pytest.mark.parametrize("method", PARAMS)
def test_breakpoint_without_pdb_uses_the_terminal(heavy_pytester, method):
    """``breakpoint()`` suspends pytest's capture and runs pdb on the terminal's stdin and stdout: a
    spawned or template child had /dev/null for stdin (BdbQuit, no prompt) and every child's stdout
    led to the parent, which printed it after the test (a fork's prompt showed once pdb was over)."""
    heavy_pytester.makepyfile(test_h1=BREAKPOINT, test_l="def test_l(): pass\n")
    runs = {mode: run_with_pdb(heavy_pytester, "-p", "no:cacheprovider", "--heavy-isolate", mode,
                               "--heavy-start", method) for mode in ("never", "always")}
    (base_ret, base), (iso_ret, iso) = runs["never"], runs["always"]
    assert base_ret == iso_ret == 0
    assert "(Pdb) 42" in iso
    assert session_lines(iso) == session_lines(base)


# --- session-level results of plugins ---------------------------------------------------------------------

HYPOTHESIS = heavy("""
from hypothesis import given, settings, strategies as st

@settings(max_examples=5, database=None)
@given(st.integers())
def test_prop(x):
    assert x == x
""")


def suite_properties(path):
    """Each junit suite property's name and its value's first line (hypothesis's statistics are
    base64 text that holds run times)."""
    import base64

    root = ET.parse(path).getroot()
    return sorted((p.get("name"), base64.b64decode(p.get("value")).decode().splitlines()[0])
                  for p in root.iter("property"))


@pytest.mark.parametrize("method", PARAMS)
def test_hypothesis_statistics_in_junit(heavy_pytester, method):
    """hypothesis records each test's statistics through pytest's junit writer, which only the
    parent has: the child's stand-in (isolation/junit.py) carries them to it."""
    pytest.importorskip("hypothesis")
    heavy_pytester.makepyfile(test_h1=HYPOTHESIS, test_h2=HYPOTHESIS)
    base, iso = parity(heavy_pytester, method, "-p", "hypothesispytest", "--hypothesis-show-statistics")
    expected = [(f"hypothesis-statistics-test_h{i}.py::test_prop", f"test_h{i}.py::test_prop:")
                for i in (1, 2)]
    assert suite_properties(heavy_pytester.path / "iso.xml") == expected
    assert suite_properties(heavy_pytester.path / "base.xml") == expected
    iso.stdout.fnmatch_lines(["*Hypothesis Statistics*", "test_h1.py::test_prop:", "*test_h2.py::test_prop:"])


SNAPSHOT = heavy("""
def test_snap(snapshot):
    assert {"module": __name__} == snapshot
""")


def snapshot_files(path):
    return {p.name: p.read_text() for p in sorted((path / "__snapshots__").iterdir())}


@pytest.mark.parametrize("method", PARAMS)
def test_syrupy_snapshots_of_isolated_modules(heavy_pytester, method):
    """syrupy judges unused snapshots once, at the session's end, from what every test asserted:
    the parent knew nothing of its children's assertions, so their snapshots were unused (exit 1),
    deleted by ``--snapshot-update``, and a fork never wrote its own."""
    pytest.importorskip("syrupy")
    heavy_pytester.makepyfile(test_h1=SNAPSHOT, test_h2=SNAPSHOT,
                              test_l=SNAPSHOT.replace("pytestmark", "unmarked"))
    plugin = ("-p", "syrupy")
    written = {}
    for mode in ("always", "never"):  # writing: isolated first, then in one process over its files
        result = heavy_pytester.runpytest_subprocess("--heavy-isolate", mode, "--heavy-start", method,
                                                     "--snapshot-update", *plugin)
        assert result.ret == 0 and "3 snapshots generated." in result.outlines, result.outlines
        written[mode] = snapshot_files(heavy_pytester.path)
        if mode == "always":
            shutil.rmtree(heavy_pytester.path / "__snapshots__")
    assert written["always"] == written["never"] and len(written["never"]) == 3
    base, iso = parity(heavy_pytester, method, *plugin)
    assert iso.ret == 0 and "3 snapshots passed." in iso.outlines
    (heavy_pytester.path / "test_l.py").unlink()  # its snapshot file is now unused: found by both
    base, iso = parity(heavy_pytester, method, *plugin)
    assert iso.ret == 1 and "2 snapshots passed. 1 snapshot unused." in iso.outlines


BENCHMARK = heavy("""
def test_bench(benchmark):
    benchmark.pedantic(sum, args=(range(10),), rounds=3)
""")


@pytest.mark.parametrize("method", PARAMS)
def test_benchmark_results_of_isolated_modules(heavy_pytester, method):
    """pytest-benchmark saves and shows its results at the session's end: the parent had none of
    its children's (missing from the table and --benchmark-json), and each spawned or template
    child autosaved a file of its own."""
    pytest.importorskip("pytest_benchmark")
    heavy_pytester.makepyfile(test_h1=BENCHMARK, test_h2=BENCHMARK,
                              test_l=BENCHMARK.replace("pytestmark", "unmarked"))
    ran = {}
    for mode in ("never", "always"):
        storage = heavy_pytester.path / f"bench-{mode}"
        base_or_iso = heavy_pytester.runpytest_subprocess(
            "-p", "benchmark", "--heavy-isolate", mode, "--heavy-start", method,
            f"--benchmark-json={mode}.json", "--benchmark-autosave", f"--benchmark-storage={storage}",
            "--benchmark-columns=rounds")
        assert base_or_iso.ret == 0
        saved = json.loads((heavy_pytester.path / f"{mode}.json").read_text())["benchmarks"]
        table = sorted(line.split()[0] for line in base_or_iso.outlines if line.startswith("test_bench "))
        ran[mode] = (sorted((b["fullname"], b["stats"]["rounds"]) for b in saved), table,
                     len(list(storage.rglob("*.json"))))
    assert ran["always"] == ran["never"]
    assert len(ran["never"][0]) == 3 and ran["never"][2] == 1


def test_plugin_option_values_do_not_break_spawned_children_under_warnings_as_errors(heavy_pytester):
    """syrupy's ``--snapshot-diff-mode`` holds one of its enums: unpickled with the options, it
    imported syrupy before the spawned child's pytest marked it for assertion rewriting, which
    warns, and under ``-W error`` every child died."""
    pytest.importorskip("syrupy")
    heavy_pytester.makepyfile(test_h1=SNAPSHOT, test_h2=SNAPSHOT)
    heavy_pytester.runpytest_subprocess("--heavy-isolate", "never", "--snapshot-update", "-p", "syrupy")
    base, iso = parity(heavy_pytester, "spawn", "-p", "syrupy", "-W", "error")
    assert iso.ret == 0 and "2 snapshots passed." in iso.outlines
