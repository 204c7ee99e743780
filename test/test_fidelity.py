"""Fidelity of isolated runs: the same generated suite run in one process (``--heavy-isolate never``)
and with every heavy module in a child (``--heavy-isolate always``) under each start method gives the
same short summary (``-rA``), junit XML and exit code. Each case here is a difference users met."""

import json
import re
import xml.etree.ElementTree as ET

import pytest

from methods import METHODS, PARAMS, marks

PYTEST_9 = int(pytest.__version__.split(".")[0]) >= 9
SHORT = re.compile(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS|SUB[A-Z]+)\b")


def heavy(body):
    return "import pytest\npytestmark = pytest.mark.requires_heavy_ram\n" + body


def short_summary(result):
    """-rA's lines and the final counts, in order (durations left out). Lines without a node id are
    left out: in-process, pytest writes unittest's -v subtest lines while the test's output is
    captured, so they land in its captured output (an isolated run writes them where they belong)."""
    lines = [line for line in result.outlines if SHORT.match(line) and "::" in line]
    final = [line for line in result.outlines if line.startswith("=") and " in " in line][-1]
    return lines + [final.rsplit(" in ", 1)[0]]


def junit(path):
    """The suite's counts and each testcase's failure/error/skip tags with their messages."""
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {k: suite.get(k) for k in ("tests", "errors", "failures", "skipped")}
    cases = [(tc.get("classname"), tc.get("name"),
              [(c.tag, c.get("message")) for c in tc if c.tag not in ("system-out", "system-err")])
             for tc in suite.iter("testcase")]
    return counts, cases


def parity(pytester, method, *args):
    """Run in one process and isolated, each with a cache of its own (``--lf``, ``--sw`` state); assert
    the user sees the same; return both results."""
    base = pytester.runpytest_subprocess("-rA", "--heavy-isolate", "never", "--junitxml=base.xml",
                                         "-o", "cache_dir=.cache-base", *args)
    iso = pytester.runpytest_subprocess("-rA", "--heavy-isolate", "always", "--heavy-start", method,
                                        "--junitxml=iso.xml", "-o", "cache_dir=.cache-iso", *args)
    assert short_summary(iso) == short_summary(base)
    assert junit(pytester.path / "iso.xml") == junit(pytester.path / "base.xml")
    assert iso.ret == base.ret
    return base, iso


# --- subtests ---------------------------------------------------------------------------------------

SUBTESTS = heavy("""
import unittest

def test_sub(subtests):
    for i in range(3):
        with subtests.test("case", i=i, name="x"):
            assert i != 1

def test_all_pass(subtests):
    with subtests.test(msg="fine", values=(1, 2.5)):
        pass

class T(unittest.TestCase):
    def test_unittest(self):
        for i in range(2):
            with self.subTest(i=i):
                self.assertEqual(i, 0)
""")


@pytest.mark.skipif(not PYTEST_9, reason="subtests are built into pytest >= 9")
@pytest.mark.parametrize("method", PARAMS)
def test_subtests_keep_the_tests_outcome_and_their_argument_reprs(heavy_pytester, method):
    heavy_pytester.makepyfile(test_h1=SUBTESTS, test_h2=SUBTESTS)
    base, iso = parity(heavy_pytester, method, "-v")
    assert "FAILED test_h1.py::test_sub - contains 1 failed subtest" in iso.outlines
    assert "SUBFAILED[case] (i=1, name='x') test_h1.py::test_sub - assert 1 != 1" in iso.outlines
    assert "SUBFAILED(i=1) test_h1.py::T::test_unittest - AssertionError: 1 != 0" in iso.outlines
    # the heavy table counts tests, not subtests: test_sub failed, test_all_pass and T passed
    iso.stdout.fnmatch_lines([f"test_h1.py *3 *1 failed 2 passed *{method}*"])


# --- short summary ----------------------------------------------------------------------------------

FAILURES = heavy("""
def test_assert_none():
    x = None
    assert x

def test_assert_message():
    assert 1 == 2, "the message"

def test_raises():
    raise ValueError("boom")

@pytest.mark.xfail(reason="known")
def test_xfail():
    assert False

def test_skip():
    pytest.skip("not here")
""")


@pytest.mark.parametrize("method", PARAMS)
def test_short_summary_lines_keep_the_crash_message(heavy_pytester, method):
    heavy_pytester.makepyfile(test_h1=FAILURES, test_h2=FAILURES, test_light="def test_light(): pass\n")
    parity(heavy_pytester, method)


# --- options that broke children ----------------------------------------------------------------------

@pytest.mark.parametrize("args", [["-W", "error"], ["-o", "filterwarnings=error"]], ids=["W-error", "ini"])
@pytest.mark.parametrize("method", PARAMS)
def test_warnings_as_errors_do_not_break_children(heavy_pytester, method, args):
    """pytest warns when it cannot rewrite an already imported plugin, and a spawned child imports
    pytest-heavy before pytest configures rewriting: under ``-W error`` every child died."""
    heavy_pytester.makepyfile(test_h1=FAILURES, test_h2=FAILURES)
    base, iso = parity(heavy_pytester, method, *args)
    assert "was not run" not in iso.stdout.str()


@pytest.mark.parametrize("method", PARAMS)
def test_without_the_debugging_plugin(heavy_pytester, method):
    """``-p no:debugging`` removes ``--pdb``/``--trace``: the plan read them and failed with INTERNALERROR."""
    heavy_pytester.makepyfile(test_h1=FAILURES, test_h2=FAILURES)
    base, iso = parity(heavy_pytester, method, "-p", "no:debugging")
    assert base.ret == 1


# --- stop rules ---------------------------------------------------------------------------------------

STOPS = heavy("""
def test_a(): pass
def test_b(): assert 0
def test_c(): pass
def test_d(): assert 0
""")


STOP_RULES = {"sw": ["--sw"], "sw-skip": ["--sw-skip"], "x": ["-x"], "maxfail": ["--maxfail=2"]}


# --sw-skip shares --sw's path; its spawn and fork cells (5 s each) run in the slow tier.
@pytest.mark.parametrize("method, args", [
    pytest.param(method, args, id=f"{method}-{rule}",
                 marks=marks(method, slow=rule == "sw-skip" and method != "template"))
    for method in METHODS for rule, args in STOP_RULES.items()])
def test_stop_rules_stop_after_the_same_test(heavy_pytester, method, args):
    """A child stops itself after the failure that stops the session (the parent's 'stop' arrives
    too late), an in-process module after a heavy one does not run a test too many, and a second
    --sw run resumes at the same test. The heavy table counts only the tests that ran."""
    light = "def test_l1(): assert 0\ndef test_l2(): pass\n"
    heavy_pytester.makepyfile(test_h1=STOPS, test_h2=STOPS, test_l=light)
    for _ in range(3 if args[0].startswith("--sw") else 1):
        base, iso = parity(heavy_pytester, method, *args)
        assert base.ret in (1, 2)
    if args == ["-x"]:
        iso.stdout.fnmatch_lines([f"test_h1.py *2 *1 failed 1 passed *{method}*stopped*"])


# --- multiprocessing inside a heavy test ----------------------------------------------------------------

MULTIPROCESSING = heavy("""
import multiprocessing, subprocess, sys
from concurrent.futures import ProcessPoolExecutor

def square(x):
    return x * x

@pytest.mark.parametrize("start", ["spawn", "forkserver"])
def test_pool(start):
    with multiprocessing.get_context(start).Pool(2) as pool:
        assert pool.map(square, [1, 2, 3]) == [1, 4, 9]

def test_executor():
    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver")) as ex:
        assert list(ex.map(square, [2, 3])) == [4, 9]
""")


@pytest.mark.parametrize("method", PARAMS)
def test_multiprocessing_helpers_are_not_leftovers(heavy_pytester, method):
    """The resource tracker and forkserver exit by themselves once their parent is gone: not
    reported as leaked; a process a test really leaves behind still is."""
    leak = "def test_leak():\n    subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    heavy_pytester.makepyfile(test_h1=MULTIPROCESSING, test_h2=MULTIPROCESSING + leak)
    base, iso = parity(heavy_pytester, method)
    assert base.ret == 0
    text = iso.stdout.str()
    assert "resource_tracker" not in text and "multiprocessing.forkserver" not in text
    leftovers = [line for line in iso.outlines if "killed leftover process" in line]
    assert len(leftovers) == 1 and leftovers[0].startswith("test_h2.py:") and "time.sleep(60)" in leftovers[0]


# --- logging ----------------------------------------------------------------------------------------------

LOGGING = heavy("""
import logging

def test_logs():
    logging.getLogger("app").warning("warn-line")
    logging.getLogger("app").info("info-line")
    logging.getLogger("app").debug("debug-line")
""")


def progress(result):
    """What the run printed between 'collected' and the summaries: -v lines and live logs."""
    start = next(i for i, line in enumerate(result.outlines) if "collected" in line)
    end = next(i for i, line in enumerate(result.outlines)
               if i > start + 1 and line.startswith(("====", "----")))
    return result.outlines[start:end]


@pytest.mark.parametrize("args", [["-o", "log_cli=true"], ["--log-cli-level=DEBUG"]], ids=["ini", "level"])
@pytest.mark.parametrize("method", PARAMS)
def test_live_logs_of_isolated_tests(heavy_pytester, method, args):
    """pytest attaches its live-log handler in its own run loop, which spawn and template children
    replace, and a child's terminal is silenced: live logs were lost."""
    light = "import logging\ndef test_light(): logging.getLogger('app').warning('light-line')\n"
    heavy_pytester.makepyfile(test_h1=LOGGING, test_h2=LOGGING, test_l=light)
    base, iso = parity(heavy_pytester, method, *args)
    assert progress(iso) == progress(base)
    assert "WARNING  app:test_h2.py:7 warn-line" in iso.outlines


@pytest.mark.parametrize("method", PARAMS)
def test_log_file_holds_every_process_records(heavy_pytester, method):
    """One --log-file for the session, with its level, written by the parent and every child (a
    child opened it anew, emptying it, or never attached its handler)."""
    light = "import logging\ndef test_light(): logging.getLogger('app').warning('light-line')\n"
    heavy_pytester.makepyfile(test_h1=LOGGING, test_h2=LOGGING, test_l=light)
    files = {}
    for mode in ("never", "always"):
        heavy_pytester.runpytest_subprocess("--heavy-isolate", mode, "--heavy-start", method,
                                            f"--log-file={mode}.log", "--log-file-level=DEBUG")
        files[mode] = sorted((heavy_pytester.path / f"{mode}.log").read_text().splitlines())
    assert len(files["never"]) == 7 and "DEBUG    app:test_h2.py:9 debug-line" in files["never"]
    assert files["always"] == files["never"]


# --- junit extras and report hooks ------------------------------------------------------------------------

JUNIT = heavy("""
def test_records(record_testsuite_property, record_xml_attribute, record_property):
    record_testsuite_property("suite_prop", "v1")
    record_xml_attribute("extra", "x1")
    record_property("p", 1)
""")

COUNTING_CONFTEST = """
import os

def pytest_runtest_logreport(report):
    report.user_properties.append(("seen_by_conftest", os.getpid()))
    with open("reports.log", "a") as fh:
        fh.write(f"{report.nodeid} {report.when}\\n")
"""


def suite_xml(path):
    """The junit file without what varies between runs: times, host, the conftest's pid."""
    text = re.sub(r' (time|timestamp|hostname)="[^"]*"', "", path.read_text())
    return re.sub(r'name="seen_by_conftest" value="\d+"', 'name="seen_by_conftest"', text)


@pytest.mark.parametrize("family", ["xunit1", "xunit2"])
@pytest.mark.parametrize("method", PARAMS)
def test_junit_suite_properties_attributes_and_report_hooks_once(heavy_pytester, method, family):
    """record_testsuite_property/record_xml_attribute reach the parent's junit file (the child has
    none, so they were dropped); a conftest's report hook sees each report once (child and parent
    both ran it: two lines per report, and its user_properties twice)."""
    heavy_pytester.makeini(f"[pytest]\nheavy_ram_gib = 4\njunit_family = {family}\n")
    heavy_pytester.makeconftest(COUNTING_CONFTEST)
    heavy_pytester.makepyfile(test_h1=JUNIT, test_h2=JUNIT)
    base, iso = parity(heavy_pytester, method)
    assert suite_xml(heavy_pytester.path / "iso.xml") == suite_xml(heavy_pytester.path / "base.xml")
    assert 'extra="x1"' in (heavy_pytester.path / "iso.xml").read_text() or family == "xunit2"
    lines = (heavy_pytester.path / "reports.log").read_text().splitlines()
    assert len(lines) == 2 * 2 * 3  # two runs, two tests, three phases
    assert iso.stdout.str().count("record_xml_attribute is incompatible") == base.stdout.str().count(
        "record_xml_attribute is incompatible")


# --- hash seed ----------------------------------------------------------------------------------------------

HASH_ORDER = heavy("""
@pytest.mark.parametrize("pair", {(letter, i) for i, letter in enumerate("abcdefghij")})
def test_pair(pair, record_property):
    record_property("pair", repr(pair))
""")

PARENT_MAPPING = """
import json, os

def pytest_collection_modifyitems(items):
    if os.environ.get("PYTEST_HEAVY_CHILD") != "1":
        with open("parent.json", "w") as fh:
            json.dump({item.nodeid: repr(item.callspec.params["pair"]) for item in items}, fh)
"""


@pytest.mark.parametrize("method", PARAMS)
def test_set_parameters_run_under_the_parents_node_ids(heavy_pytester, method, monkeypatch):
    """Ids by position over a set: a fresh interpreter (another hash secret) orders the set
    differently, and ran another parameter under the parent's node id."""
    monkeypatch.delenv("PYTHONHASHSEED", raising=False)
    heavy_pytester.makeconftest(PARENT_MAPPING)
    heavy_pytester.makepyfile(test_h1=HASH_ORDER, test_h2=HASH_ORDER)
    result = heavy_pytester.runpytest_subprocess("--heavy-isolate", "always", "--heavy-start", method,
                                                 "--junitxml=iso.xml", "-o", "junit_family=xunit1")
    assert result.ret == 0
    parent = json.loads((heavy_pytester.path / "parent.json").read_text())
    ran = {f"{tc.get('file')}::{tc.get('name')}": tc.find("properties/property").get("value")
           for tc in ET.parse(heavy_pytester.path / "iso.xml").getroot().iter("testcase")}
    assert len(ran) == 20 and ran == parent


# --- doctests ---------------------------------------------------------------------------------------------

DOCTEST = heavy('''
def f():
    """
    >>> f()
    2
    """
    return 1

def test_a():
    pass
''')


@pytest.mark.parametrize("method", PARAMS)
def test_failing_doctest_short_summary_has_no_message(heavy_pytester, method):
    """A doctest failure has no crash line: in-process its -rA line has no message; its text
    travelled as a string and the line gained the text's first line (' - 004')."""
    heavy_pytester.makepyfile(test_h1=DOCTEST, test_h2=DOCTEST)
    base, iso = parity(heavy_pytester, method, "--doctest-modules")
    assert "FAILED test_h1.py::test_h1.f" in iso.outlines

    def failures(result):
        text = result.stdout.str()
        return text[text.index("= FAILURES ="):text.index("generated xml")]

    assert failures(iso) == failures(base)


# --- output past the capture ------------------------------------------------------------------------------

OUTSIDE = heavy("""
import os, sys

def test_disabled(capsys):
    with capsys.disabled():
        print("DISABLED-OUT")

def test_tee():
    print("TEE-OUT")

def test_fd_write():
    os.write(1, b"FD-OUT\\n")
""")


@pytest.mark.parametrize("args", [["-v"], ["--capture=tee-sys"], ["--capture=sys"]],
                         ids=["fd", "tee-sys", "sys"])
@pytest.mark.parametrize("method", PARAMS)
def test_output_past_the_capture_reaches_the_terminal(heavy_pytester, method, args):
    """capsys.disabled(), tee-sys's echo and fd writes under --capture=sys reach the terminal in
    one process; a child's went to the parent's pipe and were dropped."""
    heavy_pytester.makepyfile(test_h1=OUTSIDE, test_h2=OUTSIDE)
    base, iso = parity(heavy_pytester, method, *args)
    assert progress(iso) == progress(base)
    assert any("DISABLED-OUT" in line for line in progress(iso))


# --- tmp_path ---------------------------------------------------------------------------------------------

TMP_PATH = heavy("""
def test_a(tmp_path):
    (tmp_path / "made").write_text(str(tmp_path))
""")


@pytest.mark.parametrize("method", PARAMS)
def test_tmp_path_one_tree_per_session(heavy_pytester, method):
    """Every process's tmp_path directories in the parent's --basetemp, numbered as in-process (each
    child made its own tree, or emptied the given one as it started)."""
    heavy_pytester.makepyfile(test_h1=TMP_PATH, test_h2=TMP_PATH, test_l=TMP_PATH.replace("test_a", "test_l"))
    trees = {}
    for mode in ("never", "always"):
        base = heavy_pytester.path / f"tmp-{mode}"
        result = heavy_pytester.runpytest_subprocess("--heavy-isolate", mode, "--heavy-start", method,
                                                     f"--basetemp={base}")
        assert result.ret == 0
        made = [p for p in base.glob("*/made") if not p.parent.is_symlink()]  # not the *current links
        trees[mode] = sorted(str(p.relative_to(base)) for p in made)
    assert trees["always"] == trees["never"] == ["test_a0/made", "test_a1/made", "test_l0/made"]
