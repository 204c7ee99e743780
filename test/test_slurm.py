"""``pytest-heavy split N --slurm`` against a real Slurm cluster (``scripts/slurm-local.sh start``).

Marked ``slurm``: they skip, with the reason, where ``sbatch`` is absent or no node takes jobs. Each
submits small generated suites to the local single-node cluster; the only slow one waits for Slurm to
end a task over its one-minute ``--time`` (Slurm's smallest; its controller checks limits every 30 s).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKES = Path(__file__).resolve().parent / "fakes"
INI = "[pytest]\nheavy_ram_gib = 4\nheavy_isolate = always\n"  # one heavy module is isolated too

LIGHT = """
import pytest

def test_pass(): pass
def test_fail(): assert 0
@pytest.mark.skip(reason="not here")
def test_skip(): pass
@pytest.mark.xfail
def test_xfail(): assert 0
@pytest.mark.parametrize("x", [1, 2])
def test_param(x): assert x
"""
HEAVY = """
import pytest

pytestmark = pytest.mark.requires_heavy_ram

def test_big(): assert bytearray(8 << 20)
class TestGroup:
    def test_in_class(self): pass
"""
GPU = """
import pytest

@pytest.mark.requires_gpu(count=2)
def test_two_gpus(): pass
"""


@pytest.fixture(scope="session")
def cluster() -> str:
    """The partition's node state, once per session; a skip saying why when there is no cluster."""
    if shutil.which("sbatch") is None:
        pytest.skip("sbatch not found: no Slurm here (scripts/slurm-local.sh start installs a local cluster)")
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                timeout=30).stdout.split()
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"sinfo failed: {exc}")
    if not {"idle", "mixed", "allocated"} & set(states):
        pytest.skip(f"no Slurm node takes jobs (sinfo: {' '.join(states) or 'nothing'}); "
                    "start one with scripts/slurm-local.sh start")
    return " ".join(states)


pytestmark = [pytest.mark.slurm, pytest.mark.usefixtures("cluster")]


@pytest.fixture
def suite(heavy_pytester: pytest.Pytester) -> pytest.Pytester:
    heavy_pytester.makeini(INI)
    return heavy_pytester


def split_slurm(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.run(sys.executable, "-m", "pytest_heavy.cli", "split", *args, timeout=300)


def outcomes(path: Path) -> dict[str, str]:
    """{classname::name: outcome} of a junit file, counted as ``merge_junit`` counts them."""
    found = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
        found[f"{case.get('classname')}::{case.get('name')}"] = kinds[0] if kinds else "passed"
    return found


def job_id(line: str) -> str:
    match = re.match(r"job (\d+): \d+ tasks", line)
    assert match, line
    return match.group(1)


def test_array_outcomes_equal_an_unsplit_run_and_durations_come_back(suite):
    suite.makepyfile(test_light=LIGHT, test_heavy=HEAVY, test_gpu=GPU)
    result = split_slurm(suite, "3", "--slurm", "--", "--heavy-split-by", "module", "-rs")
    out = result.stdout.str()
    job = job_id(result.outlines[0])  # the job id comes first
    result.stdout.fnmatch_lines([
        "*task ?/3: 1 tests; --gres=gpu:2",  # the GPU module's task alone asks for GPUs
        f"job {job}: pending 0 [[]-]; running 0 [[]-]; done 3 [[]1-3]",
        f"pytest-heavy split 3 --slurm (job {job}): 5 passed, 1 failed, 3 skipped, 0 errors in *s; "
        "exit 1 (?/3 FAILED exit 1); junit */.heavy/split/junit.xml",
    ])
    assert "--time" not in out and "--mem" not in out  # nothing recorded yet: nothing to size by
    plan = json.loads((suite.path / ".heavy/split/plan.json").read_text())
    for i in (1, 2, 3):  # each task ran exactly its share of the plan made at submit time
        task_junit = ET.parse(suite.path / f".heavy/split/junit-{i}-of-3.xml")
        ran = {case.get("name") for case in task_junit.iter("testcase")}
        planned = [nid for u in plan["units"].values() if u["subset"] == i for nid in u["nodeids"]]
        assert ran == {nid.rsplit("::", 1)[1] for nid in planned}

    # What the tasks recorded came back into the store...
    cached = json.loads((suite.path / ".pytest_cache/v/heavy/durations").read_text())
    assert set(cached) >= {"test_light.py::test_pass", "test_heavy.py::test_big",
                           "test_heavy.py::TestGroup::test_in_class"}
    peaks = json.loads((suite.path / ".pytest_cache/v/heavy/peaks").read_text())
    assert peaks["test_heavy.py"]["rss_mib"] > 0

    unsplit = suite.runpytest_subprocess("--junitxml=unsplit.xml")
    assert result.ret == unsplit.ret == 1, out
    assert outcomes(suite.path / ".heavy/split/junit.xml") == outcomes(suite.path / "unsplit.xml")

    # ...and the next submission is sized by it.
    again = split_slurm(suite, "3", "--slurm", "--", "--heavy-split-by", "module")
    assert again.ret == 1
    for request in (r"2 tests; --mem=\d+M --time=\d+",  # the isolated module: its recorded peak
                    r"1 tests; --gres=gpu:2 --time=\d+", r"6 tests; --time=\d+"):
        again.stdout.re_match_lines([rf"  task \d/3: {request}$"])


def waiting_test(name: str, started: Path) -> str:
    """A test that says it started (touches ``started``) and then runs far longer than any test here."""
    return (f"import time, pathlib\ndef {name}():\n    pathlib.Path({str(started)!r}).touch()\n"
            "    time.sleep(600)\n")


def wait_for(path: Path) -> None:
    for _ in range(120):
        if path.exists():
            return
        time.sleep(0.5)


@contextlib.contextmanager
def submitted(suite: pytest.Pytester, *args: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """``pytest-heavy split ARGS`` running in the background, and its job id (its first line); killed,
    and its job cancelled, if the test leaves it running."""
    proc = subprocess.Popen([sys.executable, "-m", "pytest_heavy.cli", "split", *args], cwd=suite.path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job = ""
    try:
        assert proc.stdout is not None
        job = job_id(proc.stdout.readline())
        yield proc, job
    finally:
        if proc.poll() is None:
            proc.kill()
            if job:
                subprocess.run(["scancel", job], check=False, timeout=30)


@pytest.mark.slow  # Slurm's shortest --time is one minute: the slow tier (CI runs it) holds it
def test_tasks_ended_by_slurm_are_named_and_their_tests_are_errors(suite):
    """One task over its --time (TIMEOUT), one cancelled (CANCELLED), one that passes."""
    started = suite.path / "started"
    suite.makepyfile(test_a_slow="import time\ndef test_forever(): time.sleep(600)\n",
                     test_b_cancel=waiting_test("test_wait", started), test_c_ok="def test_ok(): pass\n")
    with submitted(suite, "3", "--slurm", "--slurm-opt=--time=1", "--", "--heavy-split-by", "module") \
            as (proc, job):
        plan = json.loads((suite.path / ".heavy/split/plan.json").read_text())
        cancel = plan["units"]["test_b_cancel.py"]["subset"]
        slow = plan["units"]["test_a_slow.py"]["subset"]
        wait_for(started)
        subprocess.run(["scancel", f"{job}_{cancel}"], check=True, timeout=30)
        out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 2, out
    assert f"task {cancel}/3 ({job}_{cancel}) CANCELLED: its 1 tests are reported as errors" in out, out
    assert f"task {slow}/3 ({job}_{slow}) TIMEOUT: its 1 tests are reported as errors" in out, out
    assert re.search(rf"pytest-heavy split 3 --slurm \(job {job}\): 1 passed, 0 failed, 0 skipped, "
                     r"2 errors in .*; exit 2 \(", out), out
    merged = ET.parse(suite.path / ".heavy/split/junit.xml").getroot()
    errors = {c.get("name"): c.find("error") for c in merged.iter("testcase")}
    assert errors["test_ok"] is None
    error = errors["test_forever"]
    assert error is not None and "ended TIMEOUT before pytest finished" in error.get("message", "")
    assert "heavy split" in (error.text or "")  # the task's log tail


def test_ctrl_c_while_waiting_cancels_the_job(suite):
    started = suite.path / "started"
    suite.makepyfile(test_wait=waiting_test("test_wait", started))
    with submitted(suite, "2", "--slurm") as (proc, job):
        wait_for(started)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out
    assert f"interrupted: scancel {job}" in out
    assert re.search(rf"task \d/2 \({job}_\d\) CANCELLED: its 1 tests are reported as errors", out), out
    state = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True).stdout
    assert "JobState=RUNNING" not in state and "JobState=PENDING" not in state


def test_gpu_tasks_run_inside_their_own_mps_daemon(suite):
    """--slurm-mps: a task holding GPU work starts an MPS daemon (here the fake) in job-scoped
    directories, its tests see them, and it is stopped when the task ends."""
    bin_dir = suite.path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-cuda-mps-control"
    fake.write_text(f"#!{sys.executable}\n" + (FAKES / "nvidia-cuda-mps-control.py").read_text())
    fake.chmod(0o755)
    tmpdir = Path(tempfile.mkdtemp(prefix="mps-"))  # short: the control socket path has a length limit
    seen = suite.path / "seen"
    suite.makepyfile(
        test_gpu=f"import os, pathlib, pytest\n@pytest.mark.requires_gpu\ndef test_gpu():\n"
                 f"    pathlib.Path({str(seen)!r}).write_text(os.environ['CUDA_MPS_PIPE_DIRECTORY'])\n",
        test_cpu="import os\ndef test_cpu(): assert 'CUDA_MPS_PIPE_DIRECTORY' not in os.environ\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CUDA_MPS_", "FAKE_MPS_"))}
    env.update(PATH=os.pathsep.join([str(bin_dir), str(Path(sys.executable).parent), env["PATH"]]),
               TMPDIR=str(tmpdir), PYTEST_HEAVY_ASSUME="gpus=1x80GiB,ram=16GiB")
    try:
        result = subprocess.run(
            [sys.executable, "-m", "pytest_heavy.cli", "split", "2", "--slurm", "--slurm-mps", "--",
             "--heavy-split-by", "module"], cwd=suite.path, env=env, capture_output=True, text=True,
            timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr
        job = job_id(result.stdout.splitlines()[0])
        pipe = Path(seen.read_text())
        assert pipe.parent.parent == tmpdir and pipe.name == "pipe"
        assert re.fullmatch(r"heavy-mps-\d+", pipe.parent.name), pipe
        assert not (pipe / "nvidia-cuda-mps-control.pid").exists()  # stopped with the task
        plan = json.loads((suite.path / ".heavy/split/plan.json").read_text())
        log = (suite.path / f".heavy/split/task-{plan['units']['test_gpu.py']['subset']}.log").read_text()
        assert "MPS" in log, log
        assert job
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def test_tasks_coverage_is_combined(suite):
    suite.makepyfile(mod="def f(x):\n    if x:\n        return 1\n    return 2\n",
                     test_one="from mod import f\ndef test_1(): assert f(1) == 1\n",
                     test_two="from mod import f\ndef test_2(): assert f(0) == 2\n")
    result = split_slurm(suite, "2", "--slurm", "--", "--heavy-split-by", "module", "--cov=mod",
                         "--cov-report=")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["coverage: 2 subsets combined into *.coverage, 100% total"])
    assert not list(suite.path.glob(".coverage.split-*"))


def test_a_task_no_node_can_run_is_cancelled_not_waited_for(suite):
    """The local node has two GPUs: a task asking for three would pend forever (BadConstraints)."""
    suite.makepyfile(test_g="import pytest\n@pytest.mark.requires_gpu(count=3)\ndef test_g(): pass\n")
    result = split_slurm(suite, "1", "--slurm")
    assert result.ret == 2
    job = job_id(result.outlines[0])
    result.stdout.fnmatch_lines([
        f"task 1/1 can never start (Reason=BadConstraints: --gres=gpu:3 exceeds every node); scancel {job}",
        f"task 1/1 ({job}_1) CANCELLED: its 1 tests are reported as errors; *",
        f"pytest-heavy split 1 --slurm (job {job}): 0 passed, 0 failed, 0 skipped, 1 errors in *; exit 2 *"])
