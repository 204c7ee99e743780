"""Heavy-module isolation, end to end: each test runs a real pytest session in a subprocess."""

import importlib.util
import json
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import psutil
import pytest

from methods import METHODS, PARAMS

# Checked without importing torch here: this process stays as light as the parents it tests.
NEEDS_TORCH = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")

PARITY_SUITE = r'''
import logging, os, sys, warnings
import pytest

pytestmark = pytest.mark.requires_gpu_isolation

@pytest.fixture
def broken_setup():
    raise RuntimeError("setup went wrong")

@pytest.fixture
def broken_teardown():
    yield
    raise RuntimeError("teardown went wrong")

def test_pass(record_property):
    record_property("answer", 42)
    print("to stdout")
    sys.stderr.write("to stderr\n")
    logging.getLogger("x").warning("to the log")

def test_fail():
    assert 1 + 1 == 3, "arithmetic"

def test_setup_error(broken_setup):
    pass

def test_teardown_error(broken_teardown):
    pass

def test_skip():
    pytest.skip("not today")

@pytest.mark.xfail(reason="known bug")
def test_xfail():
    assert 0

@pytest.mark.xfail(reason="fixed already")
def test_xpass():
    pass

def test_warns():
    warnings.warn(UserWarning("mind the gap"))

@pytest.mark.parametrize("odd", ["a b", "x::y", "ü-ñ", "[br]", "dash-1.5"])
def test_params(odd):
    assert odd
'''


def junit(path):
    """{nodeid-ish: [(tag, message)]} for every testcase of a junit file."""
    root = ET.parse(path).getroot()
    cases = {}
    for tc in root.iter("testcase"):
        key = f"{tc.get('classname')}::{tc.get('name')}"
        cases.setdefault(key, []).extend(
            (c.tag, c.get("message")) for c in tc if c.tag not in ("properties", "system-out", "system-err"))
    return cases


def properties(path):
    root = ET.parse(path).getroot()
    return {tc.get("name"): {p.get("name"): p.get("value") for p in tc.iter("property")}
            for tc in root.iter("testcase")}


def summary_line(result):
    return [line for line in result.outlines if line.startswith("=") and " in " in line][-1].split(" in ")[0]


@pytest.fixture
def iso(heavy_pytester):
    """pytester with junit family xunit1 (record_property allowed) and no plugin autoload surprises."""
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\njunit_family = xunit1\n")
    return heavy_pytester


@pytest.mark.parametrize("method", METHODS)  # spawn too: the one parity check of it in the default tier
def test_isolated_run_matches_in_process_run(iso, method):
    iso.makepyfile(test_one=PARITY_SUITE, test_two=PARITY_SUITE)
    base = iso.runpytest_subprocess("-rA", "--heavy-isolate", "never", "--junitxml=base.xml")
    isolated = iso.runpytest_subprocess("-rA", "--heavy-isolate", "always", "--heavy-start", method,
                                        "--junitxml=iso.xml")
    assert isolated.ret == base.ret == 1
    assert junit(iso.path / "iso.xml") == junit(iso.path / "base.xml")
    assert summary_line(isolated) == summary_line(base)
    short = [line for line in base.outlines if line.split(" ")[0] in ("PASSED", "FAILED", "ERROR", "XFAIL",
                                                                     "XPASS", "SKIPPED")]
    assert short and all(line in isolated.outlines for line in short)
    isolated.stdout.fnmatch_lines(["*heavy modules (pytest-heavy)*", f"test_one.py *{method}*"])
    # captured output sections and the warnings summary come through too
    for text in ("to stdout", "to stderr", "to the log", "mind the gap"):
        assert isolated.stdout.str().count(text) == base.stdout.str().count(text), text
    props = properties(iso.path / "iso.xml")
    assert props["test_pass"]["answer"] == "42"
    assert props == properties(iso.path / "base.xml")  # heavy_* properties only when asked for


OPTIONS_SUITE = r'''
import logging, warnings
import pytest

pytestmark = pytest.mark.requires_heavy_ram

@pytest.fixture
def resource():
    yield {"answer": 42}

def test_explained(resource):
    local_value = [1, 2, 3]
    assert resource["answer"] == 43

def test_compare_lists():
    assert [1, 2, 3] == [1, 2, 4]

def test_logs_and_warns():
    logging.getLogger("lib").info("info from the library")
    warnings.warn(RuntimeWarning("strict runs make this an error"))

def test_passes(resource):
    assert resource
'''


@pytest.mark.parametrize("options", [["--setup-show"], ["-l", "--tb=short"], ["--tb=native", "-vv"],
                                     ["--tb=line"], ["-W", "error::RuntimeWarning", "--log-level=INFO"]],
                         ids=["setup-show", "locals-short", "native-vv", "line", "W-error-log"])
@pytest.mark.parametrize("method", PARAMS)
def test_isolated_run_matches_in_process_run_with_options(iso, method, options):
    """Children are whole pytest processes: options that need the terminal writer or change how
    failures are explained give the same reports isolated as in one process."""
    iso.makepyfile(test_one=OPTIONS_SUITE, test_two=OPTIONS_SUITE)
    base = iso.runpytest_subprocess("-rA", "--heavy-isolate", "never", "--junitxml=base.xml", *options)
    isolated = iso.runpytest_subprocess("-rA", "--heavy-isolate", "always", "--heavy-start", method,
                                        "--junitxml=iso.xml", *options)
    assert isolated.ret == base.ret == 1
    assert junit(iso.path / "iso.xml") == junit(iso.path / "base.xml")
    assert summary_line(isolated) == summary_line(base)
    explained = ("E ", "FAILED ", "resource = ", "local_value = ")
    failures = [line for line in base.outlines if line.startswith((*explained, "test_one.py:"))]
    assert failures and [line for line in isolated.outlines if line in failures] == failures


OUTPUT_MODULE = """
import sys, time, pytest
pytestmark = pytest.mark.requires_heavy_ram

@pytest.mark.parametrize("i", range(4))
def test_out(i):
    for k in range(3):
        print(f"out-{__name__}-{i}")
        sys.stderr.write(f"err-{__name__}-{i}\\n")
        time.sleep(0.01)
    assert 0
"""

CRASHING_MODULE = """
import os, pytest
pytestmark = pytest.mark.requires_heavy_ram

def test_before():
    print("before-ok")

def test_crash():
    print("last words of test_crash", flush=True)
    os._exit(9)

def test_after():
    print("after-ok")
    assert 0
"""


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("method", PARAMS)
def test_each_test_keeps_its_own_output(iso, method, workers):
    """Children side by side never see each other's captured output; a test whose child dies
    keeps what it printed; stderr a conftest hook writes between tests reaches the crash message."""
    iso.makeini("[pytest]\nheavy_ram_gib = 4\njunit_family = xunit1\njunit_logging = all\n")
    iso.makeconftest("import sys\ndef pytest_runtest_logfinish(nodeid):\n"
                     "    if nodeid.endswith('test_before'):\n"
                     "        sys.stderr.write('conftest hook wrote this\\n')\n")
    iso.makepyfile(test_a=OUTPUT_MODULE, test_b=OUTPUT_MODULE, test_crash=CRASHING_MODULE)
    result = iso.runpytest_subprocess("--heavy-isolate", "always", "--heavy-start", method, "--heavy-workers",
                                      workers, "--junitxml=out.xml")
    result.assert_outcomes(failed=10, passed=1)
    texts = {}
    for tc in ET.parse(iso.path / "out.xml").getroot().iter("testcase"):
        texts[f"{tc.get('classname')}::{tc.get('name')}"] = "".join(c.text or "" for c in tc)
    assert len(texts) == 11
    for key, text in texts.items():
        module, name = key.split("::")
        if name.startswith("test_out"):
            i = name[len("test_out["):-1]
            assert text.count(f"out-{module}-{i}") == 3 and text.count(f"err-{module}-{i}") == 3, key
            assert text.count("out-test_") == 3 and text.count("err-test_") == 3, key  # nobody else's
    assert "last words of test_crash" in texts["test_crash::test_crash"]
    after = texts["test_crash::test_after"]
    assert "last words" not in after and "after-ok" in after
    result.stdout.fnmatch_lines([
        "child process for test_crash.py died with exit 9 during test_crash.py::test_crash",
        "last lines of its stderr:", "conftest hook wrote this", "*Captured stdout call*",
        "last words of test_crash",
    ])


def test_module_fixtures_once_per_child_and_each_module_its_own_process(iso):
    body = """
import os, pytest
pytestmark = pytest.mark.requires_heavy_ram
@pytest.fixture(scope="module")
def loaded():
    with open("setups.txt", "a") as fh:
        fh.write(f"{__name__} {os.getpid()}\\n")
    return os.getpid()
def test_a(loaded): assert loaded == os.getpid()
def test_b(loaded): assert loaded == os.getpid()
"""
    iso.makepyfile(test_m1=body, test_m2=body)
    iso.makeconftest("import os\ndef pytest_sessionfinish():\n"
                     "    open('parent.txt','w').write(str(os.getpid()))\n")
    iso.runpytest_subprocess().assert_outcomes(passed=4)
    setups = (iso.path / "setups.txt").read_text().split("\n")[:-1]
    assert len(setups) == 2, setups  # one setup per module
    pids = {line.split()[1] for line in setups}
    assert len(pids) == 2 and (iso.path / "parent.txt").read_text() not in pids


def test_auto_isolates_only_with_two_heavy_modules(iso):
    body = "import os, pytest\npytestmark = pytest.mark.requires_heavy_ram\ndef test_x(): pass\n"
    iso.makepyfile(test_h1=body, test_plain="def test_y(): pass\n")
    result = iso.runpytest_subprocess()
    result.assert_outcomes(passed=2)
    assert "heavy modules" not in result.stdout.str()
    iso.makepyfile(test_h2=body)
    result = iso.runpytest_subprocess()
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*heavy modules*", "test_h1.py *", "test_h2.py *"])
    collect = iso.runpytest_subprocess("--collect-only", "-q", "--heavy-isolate", "always")
    assert "heavy modules" not in collect.stdout.str() and collect.ret == 0


def test_cicd_isolates_a_single_heavy_module(iso, monkeypatch):
    iso.makepyfile("import pytest\npytestmark = pytest.mark.requires_gpu_isolation\ndef test_x(): pass\n")
    assert "heavy modules" not in iso.runpytest_subprocess().stdout.str()
    monkeypatch.setenv("CICD", "1")
    result = iso.runpytest_subprocess()
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*heavy modules*"])


CRASH_SUITE = """
import os, signal, pytest
pytestmark = pytest.mark.requires_gpu_isolation
def test_before(): pass
def test_crash():
    import sys
    sys.stderr.write("about to die\\n")
    os.kill(os.getpid(), signal.SIGSEGV)
def test_after(): pass
def test_exit():
    os._exit(3)
def test_last(): pass
"""


@pytest.mark.parametrize("method", PARAMS)
def test_crash_costs_one_test_and_the_rest_runs_in_a_fresh_child(iso, method):
    iso.makepyfile(test_crash=CRASH_SUITE,
                   test_other="import pytest\npytestmark = pytest.mark.requires_heavy_ram\n"
                              "def test_fine(): pass\n")
    result = iso.runpytest_subprocess("-rA", "--heavy-start", method, "--junitxml=out.xml")
    result.assert_outcomes(passed=4, failed=2)
    result.stdout.fnmatch_lines([
        "child process for test_crash.py died with SIGSEGV during test_crash.py::test_crash",
        "child process for test_crash.py died with exit 3 during test_crash.py::test_exit",
        "FAILED test_crash.py::test_crash - child process for test_crash.py died with*",
    ])
    # the stderr tail in the failure holds faulthandler's dump of the crashing test's stack
    assert "Fatal Python error: Segmentation fault" in result.stdout.str()
    assert 'line 7 in test_crash' in result.stdout.str()
    result.stdout.fnmatch_lines(["test_crash.py *SIGSEGV, exit 3, exit 0 (2 restarts)*"])
    cases = junit(iso.path / "out.xml")
    assert len(cases) == 6  # exactly one testcase per collected test


def test_crash_before_any_test_fails_every_test_once(iso):
    iso.makepyfile(test_dies="import os, pytest\npytestmark = pytest.mark.requires_heavy_ram\n"
                             "@pytest.fixture(scope='module', autouse=True)\ndef boom():\n    os._exit(9)\n"
                             "def test_a(): pass\ndef test_b(): pass\n",
                   test_ok="import pytest\npytestmark = pytest.mark.requires_heavy_ram\ndef test_c(): pass\n")
    result = iso.runpytest_subprocess("-rA")
    result.assert_outcomes(passed=1, errors=2)  # each crash costs one test: the restart crashes too
    died = "child process for test_dies.py died with exit 9*"
    result.stdout.fnmatch_lines([f"ERROR test_dies.py::test_a - {died}",
                                 f"ERROR test_dies.py::test_b - {died}"])


def test_timeout_dumps_stacks_and_the_module_goes_on(iso):
    iso.makepyfile(test_hang="""
import time, pytest
pytestmark = pytest.mark.requires_gpu_isolation
def wait_forever():
    time.sleep(3600)
def test_hangs():
    wait_forever()
def test_after(): pass
""", test_other="import pytest\npytestmark = pytest.mark.requires_gpu_isolation\ndef test_ok(): pass\n")
    result = iso.runpytest_subprocess("-rA", "--heavy-timeout", "3")
    result.assert_outcomes(passed=2, failed=1)
    out = result.stdout.str()
    assert "test_hang.py timed out after 3s (--heavy-timeout) during test_hang.py::test_hangs" in out
    assert "in wait_forever" in out  # the child's Python stack, dumped before it was killed
    result.stdout.fnmatch_lines(["test_hang.py *timeout, exit 0 (1 restart)*"])


def test_leftover_grandchildren_are_killed_and_named(iso):
    iso.makepyfile(test_orphans="""
import subprocess, pytest
pytestmark = pytest.mark.requires_gpu_isolation
def test_spawns():
    detached = subprocess.Popen(["sleep", "301"], start_new_session=True)
    attached = subprocess.Popen(["sleep", "302"])
    open("pids.txt", "w").write(f"{detached.pid} {attached.pid}")
""", test_other="import pytest\npytestmark = pytest.mark.requires_gpu_isolation\ndef test_ok(): pass\n")
    result = iso.runpytest_subprocess("-rA")
    result.assert_outcomes(passed=2)
    out = result.stdout.str()
    assert "killed leftover process" in out and "sleep 301" in out and "sleep 302" in out
    for pid in map(int, (iso.path / "pids.txt").read_text().split()):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


@pytest.mark.parametrize("method", ["spawn", "fork"])
def test_exitfirst_stops_across_children(iso, method):
    iso.makepyfile(test_a="""
import pytest
pytestmark = pytest.mark.requires_heavy_ram
def test_1(): pass
def test_2(): assert 0
def test_3(): pass
""", test_b="import pytest\npytestmark = pytest.mark.requires_heavy_ram\ndef test_never(): open('ran','w')\n")
    result = iso.runpytest_subprocess("-x", "--heavy-start", method)
    result.assert_outcomes(passed=1, failed=1)
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*stopping after 1 failures*"])
    assert not (iso.path / "ran").exists()
    result = iso.runpytest_subprocess("--maxfail", "2", "--heavy-start", method)
    result.assert_outcomes(passed=3, failed=1)


def test_last_failed_and_keyword_selection_reach_the_child(iso, monkeypatch):
    iso.makepyfile(test_a="""
import os, pytest
pytestmark = pytest.mark.requires_heavy_ram
def test_good(): pass
def test_bad(): assert os.environ.get("FIXED")
def test_other(): pass
""", test_b="import pytest\npytestmark = pytest.mark.requires_heavy_ram\ndef test_b1(): pass\n")
    iso.runpytest_subprocess().assert_outcomes(passed=3, failed=1)
    iso.runpytest_subprocess("--lf").assert_outcomes(failed=1)
    monkeypatch.setenv("FIXED", "1")
    iso.runpytest_subprocess("--lf").assert_outcomes(passed=1)
    iso.runpytest_subprocess("--lf").assert_outcomes(passed=4)  # nothing failed last: all run
    result = iso.runpytest_subprocess("-k", "good or b1", "-v", "--heavy-isolate", "always")
    result.assert_outcomes(passed=2, deselected=2)
    result.stdout.fnmatch_lines(["test_a.py *1 *", "test_b.py *1 *"])


@pytest.mark.slow
@NEEDS_TORCH
def test_torch_op_at_import_never_hangs_fork_falls_back(iso):
    heavy = """
import torch, pytest
pytestmark = pytest.mark.requires_heavy_ram
torch.set_num_threads(2)
WARM = (torch.ones(256, 256) @ torch.ones(256, 256)).sum().item()  # starts the OpenMP pool at import
def test_matmul():
    assert (torch.ones(128, 128) @ torch.ones(128, 128)).sum().item() == 128 ** 3
"""
    iso.makepyfile(test_t1=heavy, test_t2=heavy)
    result = iso.runpytest_subprocess("--heavy-timeout", "120")  # the template never had the pool
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["test_t1.py *template*", "test_t2.py *template*"])
    result = iso.runpytest_subprocess("--heavy-start", "fork", "--heavy-timeout", "120")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*fork is unsafe here*OpenMP*children start with spawn*",
                                 "test_t1.py *spawn*"])


def test_forkserver_is_the_template_and_preloads_once(iso):
    """``--heavy-start forkserver`` (the process the template replaced) still works: it names the template."""
    iso.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_preload = json decimal\n")
    body = ("import sys, pytest\npytestmark = pytest.mark.requires_heavy_ram\n"
            "def test_preloaded(): assert 'decimal' in sys.modules\n")
    iso.makepyfile(test_p1=body, test_p2=body)
    result = iso.runpytest_subprocess("--heavy-start", "forkserver")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["test_p1.py *template*", "test_p2.py *template*"])


def test_template_children_see_conftest_plugin_and_ini_fixtures(iso):
    """The template builds the session's FixtureManager once for all its children: fixtures of plugins,
    of the root conftest (parsed in the server), of a subdirectory's conftest (parsed in the child)
    and the ini's usefixtures all still reach each module, once per child."""
    iso.makeini("[pytest]\nheavy_ram_gib = 4\nusefixtures = root_auto\n")
    iso.makeconftest("import pytest\n@pytest.fixture\ndef root_auto(): return 'root'\n"
                     "@pytest.fixture(scope='session')\ndef per_session(): return object()\n")
    sub = iso.mkpydir("sub")
    (sub / "conftest.py").write_text("import pytest\n@pytest.fixture\ndef deeper(): return 'deeper'\n")
    body = ("import pytest\npytestmark = pytest.mark.requires_heavy_ram\nSEEN = []\n"
            "def test_fixtures(tmp_path, deeper, per_session, request):\n"
            "    assert tmp_path.is_dir() and deeper == 'deeper' and 'root_auto' in request.fixturenames\n"
            "    SEEN.append(per_session)\n"
            "def test_one_session_per_child(per_session):\n    assert SEEN == [per_session]\n")
    (sub / "test_f1.py").write_text(body)
    (sub / "test_f2.py").write_text(body)
    result = iso.runpytest_subprocess("--heavy-start", "template")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["sub/test_f1.py *template*", "sub/test_f2.py *template*"])


@NEEDS_TORCH
def test_template_forks_torch_modules_after_preloading_torch(iso):
    """Importing torch starts an idle thread; only threads beyond those make the template refuse."""
    iso.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_preload = torch\n")
    body = ("import torch, pytest\npytestmark = pytest.mark.requires_heavy_ram\n"
            "def test_op(): assert (torch.ones(64, 64) @ torch.ones(64, 64)).sum().item() == 64 ** 3\n")
    iso.makepyfile(test_p1=body, test_p2=body)
    result = iso.runpytest_subprocess("--heavy-start", "template", "--heavy-timeout", "120")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["test_p1.py *template*", "test_p2.py *template*"])
    assert "refused" not in result.stdout.str()


@pytest.mark.slow
def test_a_run_without_heavy_modules_does_not_wait_for_the_preload(iso):
    """The server starts preloading before collection; when no child is needed it is stopped, not awaited."""
    iso.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_preload = slow_import\n")
    iso.makepyfile(slow_import="import pathlib, time\ntime.sleep(5)\npathlib.Path('imported').touch()\n",
                   test_light="def test_x(): pass\n")
    iso.runpytest_subprocess().assert_outcomes(passed=1)
    time.sleep(6)
    assert not (iso.path / "imported").exists()  # the server was killed mid-import


def test_pdb_turns_isolation_off_with_a_warning(iso):
    body = "import pytest\npytestmark = pytest.mark.requires_heavy_ram\ndef test_x(): pass\n"
    iso.makepyfile(test_a=body, test_b=body)
    result = iso.runpytest_subprocess("--pdb")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["pytest-heavy: --pdb/--trace given: heavy isolation is off for this run"])
    assert "heavy modules" not in result.stdout.str()


@pytest.mark.parametrize("method", PARAMS)
def test_dash_s_streams_child_output_live(iso, method):
    body = ("import pytest\npytestmark = pytest.mark.requires_heavy_ram\n"
            "def test_x(): print('LIVE-FROM-CHILD')\n")
    iso.makepyfile(test_a=body, test_b=body)
    result = iso.runpytest_subprocess("-s", "--heavy-start", method)
    assert result.stdout.str().count("LIVE-FROM-CHILD") == 2


def test_child_environment_and_report_json(iso, monkeypatch):
    iso.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_env =\n    MY_FLAG=on\n")
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    body = """
import os, pytest
pytestmark = pytest.mark.requires_heavy_ram
def test_env():
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "expandable_segments:True"
    assert os.environ["MY_FLAG"] == "on"
    assert os.environ["PYTEST_HEAVY_CHILD"] == "1"
"""
    iso.makepyfile(test_a=body, test_b=body)
    iso.runpytest_subprocess("--heavy-report", "heavy.json").assert_outcomes(passed=2)
    doc = json.loads((iso.path / "heavy.json").read_text())
    assert doc["schema"] == 1 and [m["unit"] for m in doc["modules"]] == ["test_a.py", "test_b.py"]
    row = doc["modules"][0]
    assert row["outcomes"] == {"passed": 1} and row["tests"] == 1 and row["peak_rss_mib"] > 10
    assert row["exit"] == "exit 0" and row["released"] == "n/a" and row["peak_gpu_mib"] is None
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "backend:native")
    iso.makepyfile(test_a=body.replace("expandable_segments:True", "backend:native"))
    iso.runpytest_subprocess("-p", "no:cacheprovider").assert_outcomes(passed=1, failed=1)


def test_workers_run_modules_at_once(iso):
    body = """
import os, time, pytest
pytestmark = pytest.mark.requires_heavy_ram
def test_meet():
    open("{me}", "w").close()
    deadline = time.time() + 20
    while not os.path.exists("{other}"):
        assert time.time() < deadline, "the other module never ran at the same time"
        time.sleep(0.05)
"""
    iso.makepyfile(test_a=body.format(me="a", other="b"), test_b=body.format(me="b", other="a"))
    iso.runpytest_subprocess("--heavy-workers", "2", "--heavy-timeout", "60").assert_outcomes(passed=2)


def test_fork_with_workers_reuses_pipe_numbers_safely(iso):
    """Six modules two at a time: the parent's pipe ends are closed and their numbers reused as they go."""
    body = ("import time, pytest\npytestmark = pytest.mark.requires_heavy_ram\n"
            "def test_x(): print('out'); time.sleep(0.2)\n")
    iso.makepyfile(**{f"test_m{i}": body for i in range(6)})
    result = iso.runpytest_subprocess("--heavy-start", "fork", "--heavy-workers", "2",
                                      "--heavy-timeout", "60")
    result.assert_outcomes(passed=6)
    assert result.stdout.str().count(" fork ") == 6


def test_exclusive_gpu_without_mps_routes_gpu_tests_into_children(iso):
    iso.makepyfile(test_gpu="import os, pytest\n@pytest.mark.requires_gpu\ndef test_x(): pass\n"
                            "def test_cpu(): pass\n")
    result = iso.runpytest_subprocess("--heavy-assume", "gpus=1x80GiB,compute_mode=exclusive_process,mps=off")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*heavy modules*", "test_gpu.py *2 passed*"])
    result = iso.runpytest_subprocess("--heavy-assume", "gpus=1x80GiB,compute_mode=exclusive_process,mps=on")
    assert "heavy modules" not in result.stdout.str()


def test_ctrl_c_stops_children_and_their_descendants(iso):
    body = """
import os, subprocess, time, pytest
pytestmark = pytest.mark.requires_heavy_ram
def test_slowly():
    sleeper = subprocess.Popen(["sleep", "303"])
    open("child.pid", "w").write(f"{os.getpid()} {sleeper.pid}")
    time.sleep(60)
"""
    iso.makepyfile(test_a=body, test_b=body)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "pytester", "--heavy-start", "spawn"],
                            cwd=iso.path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    pidfile = iso.path / "child.pid"
    deadline = time.time() + 60
    while not pidfile.exists() or len(pidfile.read_text().split()) < 2:
        assert time.time() < deadline and proc.poll() is None
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == pytest.ExitCode.INTERRUPTED, out
    assert "KeyboardInterrupt" in out
    for pid in map(int, pidfile.read_text().split()):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_the_event_stream_keeps_every_frame_whole_and_in_order_across_reused_pickling():
    """The child's sender pickles every event with one pickler: each frame must still stand alone
    (the same objects in two events are written in full twice), the reader hands over what each read
    brought in order, and a torn last frame (a child killed mid-write) is dropped."""
    import os

    from pytest_heavy import wire

    read_fd, write_fd = os.pipe()
    sender = wire.Sender(write_fd)
    location = ("test_m.py", 3, "test_x[a]")
    for i in range(3):
        sender.send(wire.Event.LOGSTART, nodeid="test_m.py::test_x[a]", location=location)
        sender.send(wire.Event.REPORT, data={"nodeid": "test_m.py::test_x[a]", "location": location, "i": i})
    os.write(write_fd, wire.encode({"event": "done", "exitstatus": 0})[:-3])  # torn
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as stream:
        reader, events = wire.EventStream(stream), []
        while (batch := reader.read()) is not None:
            events += batch
    assert [e["event"] for e in events] == ["logstart", "report"] * 3
    assert [e["data"]["i"] for e in events if e["event"] == "report"] == [0, 1, 2]
    assert all(e.get("location", e.get("data", {}).get("location")) == location for e in events)
