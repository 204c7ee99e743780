"""Heavy isolation inside pytest-xdist workers: with ``-n``, each heavy module runs in a child of the
worker it was sent to, and the session's outcomes, junit and exit code are those of a run without
``-n``. Pids are recorded by the tests themselves (and by each worker's configure hook), so "in its
own child" is checked from the processes that ran, not from what pytest-heavy says."""

import importlib.util
import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("xdist") is None, reason="xdist is not installed")

# Each worker names its pid once (a worker's config carries xdist's workerinput; no child's does: the
# template and spawn configure pytest afresh, and a fork child never configures).
CONFTEST = """
import os, pathlib

def pytest_configure(config):
    if hasattr(config, "workerinput"):
        pathlib.Path("pids").mkdir(exist_ok=True)
        pathlib.Path("pids", f"worker-{os.getpid()}").touch()
"""

# Every test names the process that ran it: pids/<module>-<pid>.
PID = """
import os, pathlib
import pytest

def ran_here(name):
    pathlib.Path("pids").mkdir(exist_ok=True)
    pathlib.Path("pids", f"{name}-{os.getpid()}").touch()
"""


def heavy_module(name, body):
    return PID + f"pytestmark = pytest.mark.requires_heavy_ram\nNAME = {name!r}\n" + body


HEAVY = """
@pytest.fixture(scope="module")
def model():
    return object()

@pytest.mark.parametrize("i", range(3))
def test_x(model, i):
    ran_here(NAME)
    assert i != 2
"""

LIGHT = PID + """
@pytest.mark.parametrize("i", range(6))
def test_light(i):
    ran_here("light")
"""


def outcomes(result):
    """{nodeid: [outcome, ...]} from -rA's short summary."""
    found = {}
    for line in result.outlines:
        m = re.match(r"^(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS) (\S+)", line)
        if m:
            found.setdefault(m.group(2), []).append(m.group(1))
    return found


def junit(path):
    """{classname::name: [tag, ...]} of a junit file: the testcase set and each one's outcome."""
    return {f"{tc.get('classname')}::{tc.get('name')}":
            sorted(c.tag for c in tc if c.tag not in ("system-out", "system-err", "properties"))
            for tc in ET.parse(path).getroot().iter("testcase")}


def pids(root):
    """{name: {pid, ...}} from the files the tests and workers left in pids/; emptied for the next run."""
    found = {}
    for path in list(Path(root, "pids").iterdir()):
        name, pid = path.name.rsplit("-", 1)
        found.setdefault(name, set()).add(int(pid))
        path.unlink()
    return found


def both(pytester, *args):
    """The same session without -n and with -n 2; each run's pids, taken right after it."""
    base = pytester.runpytest_subprocess("-rA", "--junitxml=base.xml", *args)
    base_pids = pids(pytester.path)
    dist = pytester.runpytest_subprocess("-rA", "--junitxml=dist.xml", "-n", "2", *args)
    return base, base_pids, dist, pids(pytester.path)


def test_n2_runs_each_heavy_module_in_its_own_child_with_the_outcomes_of_a_run_without_n(heavy_pytester):
    heavy_pytester.makeconftest(CONFTEST)
    modules = ["test_ha", "test_hb", "test_hc", "test_hd"]
    heavy_pytester.makepyfile(test_light=LIGHT, **{m: heavy_module(m, HEAVY) for m in modules})
    base, _, dist, ran = both(heavy_pytester)
    assert dist.ret == base.ret == 1
    assert outcomes(dist) == outcomes(base)
    assert dist.parseoutcomes() == base.parseoutcomes() == {"failed": 4, "passed": 14}
    assert junit(heavy_pytester.path / "dist.xml") == junit(heavy_pytester.path / "base.xml")
    workers = ran.pop("worker")
    assert len(workers) == 2
    assert ran.pop("light") <= workers  # light tests run in the workers, as xdist runs them
    assert sorted(ran) == modules
    children = [ran[m] for m in modules]
    assert all(len(pid) == 1 for pid in children)  # one child per module, all its tests in it
    assert len(set.union(*children)) == 4  # a child of its own each
    assert not set.union(*children) & workers  # none of them a worker
    table = dist.stdout.str().split("heavy modules (pytest-heavy)")[1]
    assert all(re.search(rf"{m}\.py .* in gw[01] ", table) for m in modules)  # one heavy table, by worker
    assert "without isolation" not in dist.stdout.str()


IDENTITY = """
def test_identity(worker_id, testrun_uid):
    ran_here(f"{NAME}_{worker_id}_{testrun_uid}")
    assert worker_id == os.environ["PYTEST_XDIST_WORKER"]
    assert testrun_uid == os.environ["PYTEST_XDIST_TESTRUNUID"]
"""


@pytest.mark.parametrize("method", ["spawn", "fork", "template"])
def test_worker_id_and_testrun_uid_in_a_child_are_its_workers(heavy_pytester, method):
    """Tests pick ports and scratch names by ``worker_id``: a spawned or template child configured
    pytest afresh, without xdist's workerinput, and answered 'master' and a uid of its own."""
    modules = ["test_ha", "test_hb", "test_hc"]
    heavy_pytester.makepyfile(**{m: heavy_module(m, IDENTITY) for m in modules})
    result = heavy_pytester.runpytest_subprocess("-n", "2", "--heavy-start", method)
    result.assert_outcomes(passed=3)
    ran = {name.split("_", 2)[2] for name in pids(heavy_pytester.path)}
    assert all(re.fullmatch(r"gw[01]_[0-9a-f]{32}", who) for who in ran)
    assert len({who.split("_")[1] for who in ran}) == 1  # one test run, one uid


CRASH = """
import os

def test_before():
    ran_here(NAME)

def test_crash():
    os.abort()

def test_after():
    ran_here(NAME)
"""

FAILS = """
def test_ok():
    ran_here(NAME)

def test_fails():
    ran_here(NAME)
    assert 0, "expected"
"""


@pytest.mark.parametrize("method", ["fork", "template"])
def test_a_failing_and_a_crashing_heavy_module_under_n_report_as_without_n(heavy_pytester, method):
    """A crash fails its test and a fresh child runs the rest, in the worker as without -n; the
    worker itself goes on (no 'worker crashed' and no replacement worker)."""
    heavy_pytester.makeconftest(CONFTEST)
    heavy_pytester.makepyfile(test_crash=heavy_module("crash", CRASH),
                              test_fails=heavy_module("fails", FAILS), test_light=LIGHT)
    base, _, dist, ran = both(heavy_pytester, "--heavy-start", method)
    assert dist.ret == base.ret == 1
    assert outcomes(dist) == outcomes(base)
    assert outcomes(dist)["test_crash.py::test_crash"] == ["FAILED"]
    assert dist.parseoutcomes() == {"failed": 2, "passed": 9}
    assert junit(heavy_pytester.path / "dist.xml") == junit(heavy_pytester.path / "base.xml")
    assert len(ran["crash"]) == 2 and len(ran["fails"]) == 1  # the crash cost one child, not the worker
    assert not (ran["crash"] | ran["fails"]) & ran["worker"]
    assert "crashed" not in dist.stdout.str() and "replacing" not in dist.stdout.str()


STOPS = """
def test_ok():
    pass

def test_fails():
    assert 0

def test_after():
    pass
"""


def test_x_under_n_stops_as_xdist_does(heavy_pytester):
    """-x with -n: the child stops after the failure, as the test would in-process, and xdist's
    controller ends the session as it does without pytest-heavy (its exit status and lines)."""
    passing = "@pytest.mark.parametrize('i', range(3))\ndef test_x(i):\n    pass\n"
    heavy_pytester.makepyfile(test_stops=heavy_module("stops", STOPS), test_other=heavy_module("o", passing))
    plain = heavy_pytester.runpytest_subprocess("-rA", "-n", "2", "-x", "--heavy-isolate", "never")
    dist = heavy_pytester.runpytest_subprocess("-rA", "-n", "2", "-x")
    assert dist.ret == plain.ret
    dist.stdout.fnmatch_lines(["*stopping after 1 failures*"])
    found = outcomes(dist)
    assert found["test_stops.py::test_fails"] == ["FAILED"]
    assert "test_stops.py::test_after" not in found  # the child stopped at the failure
    assert all(len(o) == 1 for o in found.values())


GPU_MODULE = """
import time, pytest, pynvml
pytestmark = [pytest.mark.requires_gpu, pytest.mark.requires_gpu_isolation]

def test_allocate():
    pynvml.fake_allocate(2048)
    time.sleep(0.4)  # held while the worker's monitor samples (every 0.1 s)
"""


def test_gpu_modules_under_n_are_measured_and_released_in_one_table(fake_gpu, monkeypatch):
    """Each worker measures its children's GPU memory and waits for its release, as without -n; the
    controller's --heavy-report holds every worker's rows (the fake NVML, test/fakes/pynvml.py)."""
    monkeypatch.setenv("FAKE_PYNVML_STATE", str(fake_gpu.path / "allocations.jsonl"))
    fake_gpu.makepyfile(test_g1=GPU_MODULE, test_g2=GPU_MODULE)
    result = fake_gpu.runpytest_subprocess("-p", "pynvml", "-n", "2", "--heavy-report", "heavy.json")
    result.assert_outcomes(passed=2)
    rows = {r["unit"]: r for r in json.loads((fake_gpu.path / "heavy.json").read_text())["modules"]}
    assert sorted(rows) == ["test_g1.py", "test_g2.py"]
    for row in rows.values():
        assert row["worker"] in ("gw0", "gw1")
        assert row["peak_gpu_mib"] >= 2048 and row["released"] == "yes", row


def test_a_light_test_that_crashes_its_worker_fails_once_as_with_xdist_alone(heavy_pytester):
    """The scheduler that keeps heavy modules whole hands a crashed worker's unfinished work to the
    others, less the test it crashed in (xdist reports that one as failed): one replaced worker, as
    under xdist's own ``load``, not one crashed worker after another."""
    crash = "import os\n\ndef test_l():\n    pass\n\ndef test_crash():\n    os.abort()\n"
    passing = STOPS.replace("assert 0", "pass")
    heavy_pytester.makepyfile(test_light=crash, test_h1=heavy_module("h1", passing),
                              test_h2=heavy_module("h2", passing))
    plain = heavy_pytester.runpytest_subprocess("-rA", "-n", "2", "--heavy-isolate", "never")
    dist = heavy_pytester.runpytest_subprocess("-rA", "-n", "2", timeout=120)  # a crash loop could hang
    assert dist.ret == plain.ret == 1
    assert outcomes(dist) == outcomes(plain)
    assert outcomes(dist)["test_light.py::test_crash"] == ["FAILED"]
    assert dist.parseoutcomes() == {"failed": 1, "passed": 7}
    assert dist.stdout.str().count("replacing crashed worker") == 1
