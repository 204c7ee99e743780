"""Plugins ML suites combine with, each driven through a real pytest session isolated and in one
process, outcomes compared. A plugin that is not installed skips its tests (the dev tools have them all).
"""

import importlib.util
import re
import xml.etree.ElementTree as ET

import pytest

from methods import METHODS, PARAMS, marks

# For tests that wait out real timeouts: fork in the default tier, the other methods in the slow tier.
METHODS_FORK_FAST = [pytest.param(m, marks=marks(m, slow=m != "fork"), id=m) for m in METHODS]


def needs(module):
    return pytest.mark.skipif(importlib.util.find_spec(module) is None, reason=f"{module} is not installed")


def outcomes(result):
    """{nodeid: outcome} from -rA's short summary, plus the summary line's counts."""
    found = {}
    for line in result.outlines:
        m = re.match(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS|RERUN) (\S+)", line)
        if m:
            found.setdefault(m.group(2), []).append(m.group(1))
    return found, result.parseoutcomes()


def cases(path):
    """{classname::name: [(tag, message)]} of a junit file; output and properties (isolated tests
    carry heavy_module_peak_rss_mib) left out."""
    found = {}
    for tc in ET.parse(path).getroot().iter("testcase"):
        key = f"{tc.get('classname')}::{tc.get('name')}"
        found.setdefault(key, []).extend(
            (c.tag, c.get("message")) for c in tc if c.tag not in ("system-out", "system-err", "properties"))
    return found


def both(pytester, *args, method="fork"):
    """The same session in one process and with every heavy module isolated."""
    base = pytester.runpytest_subprocess("-rA", "--heavy-isolate", "never", *args)
    isolated = pytester.runpytest_subprocess("-rA", "--heavy-isolate", "always", "--heavy-start", method,
                                             *args)
    return base, isolated


def heavy(body):
    return "import pytest\npytestmark = pytest.mark.requires_heavy_ram\n" + body


# --- pytest-xdist -----------------------------------------------------------------------------------

XDIST_MODULE = heavy("""
@pytest.fixture(scope="module")
def model():
    return object()

@pytest.mark.parametrize("i", range(4))
def test_x(model, i):
    assert i != 3
""")


@needs("xdist")
@pytest.mark.parametrize("dist", ["load", "loadfile", "loadscope", "worksteal", "loadgroup"])
def test_xdist_isolates_heavy_modules_where_the_mode_keeps_them_whole(heavy_pytester, dist):
    """load, loadfile, loadscope: each heavy module reaches one worker whole and runs in a child of it
    (one heavy table); worksteal and loadgroup may split a module: unisolated, and one line says so."""
    heavy_pytester.makepyfile(test_a=XDIST_MODULE, test_b=XDIST_MODULE, test_c=XDIST_MODULE,
                              test_plain="def test_plain(): pass\n")
    base = heavy_pytester.runpytest_subprocess("-rA")
    result = heavy_pytester.runpytest_subprocess("-rA", "-n", "2", "--dist", dist)
    assert result.ret == base.ret == 1
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()
    assert outcomes(result)[1] == outcomes(base)[1] == {"failed": 3, "passed": 10}
    assert sorted(line for line in result.outlines if line.startswith("FAILED")) == sorted(
        line for line in base.outlines if line.startswith("FAILED"))
    unisolated = [f"pytest-heavy: 3 heavy modules ran inside pytest-xdist workers without isolation (--dist "
                  f"{dist} may split a module across workers; --dist load, loadscope, loadfile or each "
                  "isolate them)"]
    if dist in ("worksteal", "loadgroup"):
        result.stdout.fnmatch_lines(unisolated)
        assert "heavy modules (pytest-heavy)" not in result.stdout.str()
    else:
        result.stdout.fnmatch_lines(["*heavy modules (pytest-heavy)*", "test_a.py *in gw*"])
        assert "without isolation" not in result.stdout.str()


@needs("xdist")
def test_xdist_and_heavy_workers_say_that_each_worker_runs_one_child_at_a_time(heavy_pytester):
    heavy_pytester.makepyfile(test_a=XDIST_MODULE, test_b=XDIST_MODULE)
    result = heavy_pytester.runpytest_subprocess("-n", "2", "--heavy-workers", "2",
                                                 "--heavy-isolate", "always")
    result.assert_outcomes(passed=6, failed=2)
    result.stdout.fnmatch_lines(["*heavy modules (pytest-heavy)*",
                                 "pytest-heavy: --heavy-workers has no effect with -n: each worker runs its "
                                 "heavy modules one at a time, in a child each"])


# --- pytest-timeout ---------------------------------------------------------------------------------

TIMEOUT_MODULE = heavy("""
import time

def test_ini_timeout():
    time.sleep(30)

@pytest.mark.timeout(0.5)
def test_marked_timeout():
    time.sleep(30)

def test_after():
    pass
""")


@needs("pytest_timeout")
@pytest.mark.parametrize("method", METHODS_FORK_FAST)
def test_timeout_signal_method_fails_the_test_with_its_message(heavy_pytester, method):
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\ntimeout = 1\ntimeout_method = signal\n")
    heavy_pytester.makepyfile(test_a=TIMEOUT_MODULE, test_b=TIMEOUT_MODULE)
    base, isolated = both(heavy_pytester, method=method)
    assert outcomes(isolated) == outcomes(base)
    assert outcomes(isolated)[1] == {"failed": 4, "passed": 2}
    isolated.stdout.fnmatch_lines(["E       Failed: Timeout (>1.0s) from pytest-timeout.",
                                   "E       Failed: Timeout (>0.5s) from pytest-timeout."])


@needs("pytest_timeout")
@pytest.mark.parametrize("method", METHODS_FORK_FAST)
def test_timeout_thread_method_fails_the_test_and_the_module_goes_on(heavy_pytester, method):
    """In one process the thread method ends the whole session (os._exit); in a child it ends only
    the child: the test fails with pytest-timeout's dump, the module's later tests still run."""
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\ntimeout = 1\ntimeout_method = thread\n")
    heavy_pytester.makepyfile(test_a=TIMEOUT_MODULE, test_b=TIMEOUT_MODULE)
    result = heavy_pytester.runpytest_subprocess("-rA", "--heavy-isolate", "always", "--heavy-start", method)
    result.assert_outcomes(failed=4, passed=2)
    result.stdout.fnmatch_lines([
        "child process for test_a.py died with exit 1 during test_a.py::test_ini_timeout",
        "its terminal output during the test:", "+*+ Timeout +*+", "*Stack of MainThread*",
        "*time.sleep(30)*", "PASSED test_a.py::test_after",
    ])
    assert result.stdout.str().count("its terminal output during the test:") == 4


# --- pytest-rerunfailures ---------------------------------------------------------------------------

FLAKY_MODULE = heavy("""
import pathlib

@pytest.mark.flaky(reruns=2)
def test_flaky(request):
    marker = pathlib.Path(request.node.name + "-" + __name__ + ".ran")
    if not marker.exists():
        marker.write_text("once")
        assert 0, "first try fails"

def test_fails_always():
    assert 0
""")


@needs("pytest_rerunfailures")
@pytest.mark.parametrize("method", PARAMS)
def test_rerunfailures_reruns_in_the_child_reported_as_in_process(heavy_pytester, method):
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\njunit_family = xunit1\n")
    heavy_pytester.makepyfile(test_a=FLAKY_MODULE, test_b=FLAKY_MODULE)
    base = heavy_pytester.runpytest_subprocess("-rA", "--heavy-isolate", "never", "--reruns", "1",
                                               "--junitxml=base.xml")
    for marker in heavy_pytester.path.glob("*.ran"):
        marker.unlink()
    isolated = heavy_pytester.runpytest_subprocess("-rA", "--heavy-isolate", "always", "--heavy-start",
                                                   method, "--reruns", "1", "--junitxml=iso.xml")
    assert outcomes(isolated) == outcomes(base)
    assert outcomes(isolated)[1] == {"failed": 2, "passed": 2, "rerun": 4}
    modules = ("test_a.py ", "test_b.py ")
    progress = [[line for line in r.outlines if line.startswith(modules)] for r in (base, isolated)]
    assert progress[1][:2] == progress[0][:2] and progress[0][0].startswith("test_a.py R.RF ")
    assert cases(heavy_pytester.path / "iso.xml") == cases(heavy_pytester.path / "base.xml")


@needs("pytest_rerunfailures")
@needs("xdist")
def test_rerunfailures_server_thread_does_not_change_the_start_method(heavy_pytester):
    """With xdist installed, rerunfailures starts a socket server thread at configure time:
    it was there before collection, so fork from the parent is still safe."""
    heavy_pytester.makepyfile(test_a=FLAKY_MODULE, test_b=FLAKY_MODULE)
    result = heavy_pytester.runpytest_subprocess("-p", "xdist", "-p", "rerunfailures",
                                                 "--heavy-start", "fork")
    assert result.parseoutcomes() == {"passed": 2, "failed": 2, "rerun": 2}
    result.stdout.fnmatch_lines(["test_a.py *fork *", "test_b.py *fork *"])
    assert "started with spawn" not in result.stdout.str()


def test_a_thread_started_by_a_test_module_makes_fork_unsafe_and_the_table_says_why(heavy_pytester):
    body = heavy("""
import threading, time
threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
def test_x():
    pass
""")
    heavy_pytester.makepyfile(test_a=body, test_b=body)
    result = heavy_pytester.runpytest_subprocess()  # the template never had those threads
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["test_a.py *template *", "test_b.py *template *"])
    result = heavy_pytester.runpytest_subprocess("--heavy-start", "fork")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["test_a.py *spawn *", "test_a.py: started with spawn: fork is unsafe here "
                                 "(2 Python threads started since the session began (Thread-* (sleep), *))"])


# --- pytest-asyncio ---------------------------------------------------------------------------------

ASYNC_STRICT = heavy("""
import asyncio
import pytest_asyncio

@pytest_asyncio.fixture
async def resource():
    await asyncio.sleep(0)
    yield 41

@pytest.mark.asyncio
async def test_async(resource):
    await asyncio.sleep(0)
    assert resource + 1 == 42

@pytest.mark.asyncio
async def test_async_fails(resource):
    assert resource == 42
""")

ASYNC_AUTO = heavy("""
import asyncio

@pytest.fixture
async def resource():
    yield 41

async def test_async(resource):
    await asyncio.sleep(0)
    assert resource + 1 == 42

async def test_async_fails(resource):
    assert resource == 42
""")


@needs("pytest_asyncio")
@pytest.mark.parametrize("method", PARAMS)
@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_asyncio_tests_and_fixtures_in_isolated_modules(heavy_pytester, mode, method):
    body = ASYNC_STRICT if mode == "strict" else ASYNC_AUTO
    heavy_pytester.makepyfile(test_a=body, test_b=body)
    base, isolated = both(heavy_pytester, "--asyncio-mode", mode, method=method)
    assert outcomes(isolated) == outcomes(base)
    assert outcomes(isolated)[1] == {"failed": 2, "passed": 2}
    explained = "E       assert 41 == 42"
    assert isolated.stdout.str().count(explained) == base.stdout.str().count(explained) == 2


# --- pytest-cov -------------------------------------------------------------------------------------

COV_PACKAGE = """
def used_in_a(x):
    return x + 1

def used_in_b(x):
    if x:
        return x * 2
    return 0

def never_called():
    return None
"""


@needs("pytest_cov")
@pytest.mark.parametrize("method", PARAMS)
def test_cov_one_combined_report_with_the_childrens_lines(heavy_pytester, method):
    heavy_pytester.makepyfile(**{"mylib/__init__.py": COV_PACKAGE})
    heavy_pytester.makepyprojecttoml("""
[tool.pytest.ini_options]
heavy_ram_gib = "4"
[tool.coverage.run]
source = ["mylib"]
patch = ["subprocess", "_exit", "fork"]
sigterm = true
""")
    (heavy_pytester.path / "tox.ini").unlink()
    heavy_pytester.makepyfile(test_a=heavy("import mylib\ndef test_a(): assert mylib.used_in_a(1) == 2\n"),
                              test_b=heavy("import mylib\ndef test_b(): assert mylib.used_in_b(2) == 4\n"))
    base, isolated = both(heavy_pytester, "--cov", "--cov-report=term-missing", method=method)
    assert base.ret == isolated.ret == 0
    total = [line for line in base.outlines if line.startswith("mylib/__init__.py")]
    assert total and total == [line for line in isolated.outlines if line.startswith("mylib/__init__.py")]
    assert total[0].split()[-3:] == ["75%", "7,", "10"]  # only the lines no test runs are missed
    for result in (base, isolated):
        text = result.stdout.str() + result.stderr.str()
        assert "previously imported" not in text and "CoverageWarning" not in text
    assert not list(heavy_pytester.path.glob(".coverage.*"))  # every child's data file was combined


# --- pytest-randomly --------------------------------------------------------------------------------

RANDOM_MODULE = heavy("""
import random

@pytest.mark.parametrize("i", range(6))
def test_draw(request, i):
    with open("draws.txt", "a") as fh:
        fh.write(f"{request.node.nodeid} {random.random()}\\n")
""")


@needs("pytest_randomly")
@pytest.mark.parametrize("method", PARAMS)
def test_randomly_same_order_and_seeds_as_in_process(heavy_pytester, method):
    heavy_pytester.makepyfile(test_a=RANDOM_MODULE, test_b=RANDOM_MODULE)
    draws = []
    for isolate in ("never", "always"):
        # -p randomly: turned on again after the fixture's -p no:randomly
        result = heavy_pytester.runpytest_subprocess("-p", "randomly", "--randomly-seed", "1234",
                                                     "--heavy-isolate", isolate, "--heavy-start", method)
        result.assert_outcomes(passed=12)
        draws.append((heavy_pytester.path / "draws.txt").read_text().splitlines())
        (heavy_pytester.path / "draws.txt").unlink()
    assert len(draws[0]) == 12 and draws[0] == draws[1]  # same order, same random values
    order = [line.split()[0] for line in draws[0]]
    assert order != sorted(order)  # reshuffled indeed


# --- pytest-split -----------------------------------------------------------------------------------


@needs("pytest_split")
@pytest.mark.slow
def test_pytest_split_and_heavy_split_coexist(heavy_pytester):
    """Both partition the same way isolated or not (no cache: --heavy-split would learn durations
    between the runs and balance differently)."""
    module = heavy("@pytest.mark.parametrize('i', range(3))\ndef test_x(i): pass\n")
    heavy_pytester.makepyfile(test_a=module, test_b=module, test_c=module, test_d=module)
    seen = {}
    for option in ("--splits", "--heavy-split"):
        for group in (1, 2):
            args = ("--splits", "2", "--group", str(group)) if option == "--splits" else (
                "--heavy-split", f"{group}/2", "--heavy-split-by", "module")
            base, isolated = both(heavy_pytester, "-p", "no:cacheprovider", *args)
            assert outcomes(isolated) == outcomes(base)
            assert isolated.ret == 0 and "heavy modules (pytest-heavy)" in isolated.stdout.str()
            seen.setdefault(option, []).extend(outcomes(isolated)[0])
    for option, nodeids in seen.items():
        assert sorted(nodeids) == sorted(set(nodeids)) and len(nodeids) == 12, option


# --- pytest-forked ----------------------------------------------------------------------------------


@needs("pytest_forked")
@pytest.mark.parametrize("method", PARAMS)
def test_forked_runs_each_test_in_a_fork_of_the_child(heavy_pytester, method):
    """--forked forks once more per test inside the child: outcomes are those of --forked alone,
    and a crash costs only that test's fork, not the child."""
    body = heavy("""
import os

def test_ok():
    pass

def test_fails():
    assert 0

def test_crash():
    os._exit(7)

def test_after():
    pass
""")
    heavy_pytester.makepyfile(test_a=body, test_b=body)
    base, isolated = both(heavy_pytester, "--forked", method=method)
    assert outcomes(isolated) == outcomes(base)
    isolated.stdout.fnmatch_lines(["test_a.py *exit 1"])  # the child itself never crashed: no restart
    if pytest.version_tuple >= (9, 2) and outcomes(base)[1] == {"failed": 8}:
        # pytest-forked 1.7.5 marshals report.__dict__, which holds a NodeId object since pytest 9.2:
        # every forked test "EXITED with status 3", in one process as in a child.
        pytest.xfail("pytest-forked is broken on pytest >= 9.2 (every test exits with status 3)")
    assert outcomes(isolated)[1] == {"failed": 4, "passed": 4}
