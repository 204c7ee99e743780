"""The template process: forked from pytest at session start, it imports what heavy modules use and
forks their children. Checked end to end in real sessions: what it preloads, that neither it nor the
parent ever creates a CUDA context (fake NVML, torch double), that a child's environment never touches
the disk, and that a module of thousands of tests still reaches its child."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pytest_heavy import draining

TORCH_DOUBLE = Path(__file__).resolve().parent / "fakes" / "torch_double"


def prepend_path(monkeypatch: pytest.MonkeyPatch, *paths: Path) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([*map(str, paths), os.environ.get("PYTHONPATH", "")]))


GPU_MODULE = """
import os, sys
PRELOADED = "torch" in sys.modules  # the template imported it before this child was forked
import pytest, torch
pytestmark = [pytest.mark.requires_gpu, pytest.mark.requires_heavy_ram]

def test_gpu():
    assert PRELOADED
    assert not torch.cuda.is_initialized()  # neither the template nor an earlier sibling made a context
    torch.cuda.init()  # this child's own context, gone with it
"""
PARENT_LAST = """
import torch

def test_parent_has_no_context():
    assert not torch.cuda.is_initialized()
"""


def test_neither_the_template_nor_the_parent_initializes_cuda(fake_gpu, monkeypatch):
    """One fake H100 (fake NVML) and the torch double on the path: the template imports "torch" because
    the GPU modules did, every child starts without a context though the one before it made one, and
    the parent, which runs a test after them, has none either."""
    prepend_path(monkeypatch, TORCH_DOUBLE)
    fake_gpu.makepyfile(test_g1=GPU_MODULE, test_g2=GPU_MODULE, test_g3=GPU_MODULE, test_z_parent=PARENT_LAST)
    result = fake_gpu.runpytest_subprocess("-p", "pynvml")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines([f"test_g{i}.py *template *" for i in (1, 2, 3)])
    assert "CUDA" not in result.stdout.str()


RECORDS_ITS_IMPORT = """
import importlib.util
import os
with open(os.environ["IMPORT_LOG"], "a") as fh:
    fh.write(f"{os.getpid()}\\n")
"""
USES_IT = """
import os, pytest, heavylib
pytestmark = pytest.mark.requires_heavy_ram

def test_uses_it():
    assert heavylib.__name__ == "heavylib"
"""


@pytest.mark.parametrize(("start", "imports"), [("auto", 1), ("spawn", 3)])
def test_what_heavy_modules_import_is_imported_once_by_the_template(heavy_pytester, tmp_path_factory,
                                                                    monkeypatch, start, imports):
    """No heavy_preload: the parent imports ``heavylib`` while collecting, and nobody else: the template
    children fork from was forked from the parent just after that import (a snapshot), so neither it
    nor the children import it again (spawned children each do)."""
    site = tmp_path_factory.mktemp("site")  # outside the rootdir: a package, not the project's code
    (site / "heavylib.py").write_text(RECORDS_ITS_IMPORT)
    log = site / "imports.log"
    prepend_path(monkeypatch, site)
    monkeypatch.setenv("IMPORT_LOG", str(log))
    heavy_pytester.makepyfile(test_h1=USES_IT, test_h2=USES_IT)
    result = heavy_pytester.runpytest_subprocess("--heavy-start", start)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([f"test_h1.py *{'template' if start == 'auto' else start} *"])
    pids = log.read_text().split()
    assert len(pids) == len(set(pids)) == imports, pids


SECRET = "s3cr3t-token-for-pytest-heavy-test"
LOOKS_FOR_ITS_SECRET = f"""
import os, pytest
pytestmark = pytest.mark.requires_heavy_ram

def test_the_secret_is_in_the_environment_and_nowhere_on_disk():
    assert os.environ["HF_TOKEN"] == "{SECRET}"
    for root, _dirs, files in os.walk(os.environ["TMPDIR"]):
        for name in files:
            path = os.path.join(root, name)
            try:
                data = open(path, "rb").read()
            except OSError:
                continue
            assert b"{SECRET}" not in data, path
"""


def test_a_childs_environment_travels_over_the_socket_not_through_a_file(heavy_pytester, monkeypatch):
    """The forkserver wrote each request, with the child's whole environment (tokens included), to a
    JSON file in a temporary directory, left behind when pytest was killed. Nothing is written now."""
    tmp = heavy_pytester.mkdir("tmp")
    monkeypatch.setenv("TMPDIR", str(tmp))
    monkeypatch.setenv("HF_TOKEN", SECRET)
    heavy_pytester.makepyfile(test_s1=LOOKS_FOR_ITS_SECRET, test_s2=LOOKS_FOR_ITS_SECRET)
    result = heavy_pytester.runpytest_subprocess("--heavy-start", "template", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["test_s1.py *template *", "test_s2.py *template *"])


MANY = """
import pytest
pytestmark = pytest.mark.requires_heavy_ram

@pytest.mark.parametrize("case", [f"a-rather-long-parameter-id-{i:05d}" for i in range(2500)])
def test_many(case):
    assert case.startswith("a-rather")
"""


def test_a_request_larger_than_one_socket_message_reaches_the_child(heavy_pytester):
    """2,500 node ids of ~60 bytes: the request travels in pieces, and every test runs once."""
    heavy_pytester.makepyfile(test_m1=MANY, test_m2=MANY)
    result = heavy_pytester.runpytest_subprocess("--heavy-start", "template", "-q")
    result.assert_outcomes(passed=5000)
    result.stdout.fnmatch_lines(["test_m1.py *2500 *template *"])


def test_a_preload_that_creates_a_cuda_context_stops_the_template_not_the_run(fake_gpu, monkeypatch):
    """heavy_preload names a package whose import creates a CUDA context (the torch double's): the
    template must not fork with it. It refuses for good, says why once, and the children fork from the
    parent, which never imported that package and holds no context."""
    prepend_path(monkeypatch, TORCH_DOUBLE)
    fake_gpu.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_release_timeout_s = 0\n"
                     "heavy_preload = makes_context\n")
    fake_gpu.makepyfile(makes_context="import torch\ntorch.cuda.init()\n",
                        test_g1=GPU_MODULE.replace("assert PRELOADED", "pass"),
                        test_g2=GPU_MODULE.replace("assert PRELOADED", "pass"))
    result = fake_gpu.runpytest_subprocess("-p", "pynvml")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "pytest-heavy: template refused (the template cannot fork safely: CUDA is initialized in this "
        "process); no later child starts with it",
        "test_g1.py *fork *", "test_g2.py *fork *"])


RECORDS_ITS_CODE = """
import os, sys
def record(step):
    with open(os.environ["IMPORT_LOG"], "a") as fh:
        fh.write(f"{os.getpid()} {__name__} {step} {'heavylib' in sys.modules}\\n")
record("before")
import pytest, heavylib
record("after")
pytestmark = pytest.mark.requires_heavy_ram

def test_defined_after_the_import():
    assert heavylib.__name__ == "heavylib"
"""


def test_a_test_modules_code_runs_in_its_child_though_the_snapshot_was_taken_inside_it(
        heavy_pytester, tmp_path_factory, monkeypatch):
    """The snapshot is forked half way through test_c1's import (just after ``import heavylib``); it
    drops the half-built module, so test_c1's child imports it again, from the top, and finds
    heavylib loaded already: every module's code runs once in the parent and once in its child."""
    site = tmp_path_factory.mktemp("site")
    (site / "heavylib.py").write_text(RECORDS_ITS_IMPORT)
    log = site / "imports.log"
    prepend_path(monkeypatch, site)
    monkeypatch.setenv("IMPORT_LOG", str(log))
    heavy_pytester.makepyfile(test_c1=RECORDS_ITS_CODE, test_c2=RECORDS_ITS_CODE)
    result = heavy_pytester.runpytest_subprocess()
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["test_c1.py *template *", "test_c2.py *template *"])
    lines = [line.split() for line in log.read_text().splitlines()]
    imported_by = [pid for pid, *rest in lines if not rest]
    parent = imported_by[0]
    assert imported_by == [parent], lines  # heavylib: once, by the parent
    steps = [line for line in lines if len(line) > 1]
    in_children = sorted((module, step, loaded) for pid, module, step, loaded in steps if pid != parent)
    assert in_children == [(module, step, "True") for module in ("test_c1", "test_c2")
                           for step in ("after", "before")], lines


NEEDS_TORCH = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
STARTS_POOL_AT_IMPORT = """
import pytest, torch, heavylib
torch.set_num_threads(2)
W = torch.ones(256, 256) @ torch.ones(256, 256)  # above ATen's grain size: the OpenMP pool starts here
pytestmark = pytest.mark.requires_heavy_ram

def test_parallel():
    assert (torch.ones(256, 256) @ W).sum().item() == 256 ** 4
"""


@NEEDS_TORCH
def test_the_snapshot_is_taken_before_a_modules_next_line_starts_the_pool_and_later_packages_are_preloaded(
        heavy_pytester, tmp_path_factory, monkeypatch):
    """test_b1 starts the OpenMP pool on the line after ``import torch, heavylib``: the snapshot, taken
    between the two, holds both and no pool (heavylib is imported once, by the parent), and no child
    hangs on its first parallel op. From then on pytest cannot fork safely: ``laterlib``, which
    test_b2 imports, is imported by the template too (a preload)."""
    site = tmp_path_factory.mktemp("site")
    (site / "heavylib.py").write_text(RECORDS_ITS_IMPORT)
    (site / "laterlib.py").write_text(RECORDS_ITS_IMPORT.replace("\\n", " later\\n"))
    log = site / "imports.log"
    prepend_path(monkeypatch, site)
    monkeypatch.setenv("IMPORT_LOG", str(log))
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_timeout_s = 300\n")
    heavy_pytester.makepyfile(test_b1=STARTS_POOL_AT_IMPORT, test_b2=USES_IT.replace("heavylib", "laterlib"),
                              test_b3=STARTS_POOL_AT_IMPORT)
    result = heavy_pytester.runpytest_subprocess()
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([f"test_b{i}.py *template *exit 0" for i in (1, 2, 3)])
    assert "refused" not in result.stdout.str() and "unsafe" not in result.stdout.str()
    lines = log.read_text().splitlines()
    assert len([line for line in lines if "later" not in line]) == 1, lines  # heavylib: by the parent only
    assert len({line for line in lines if "later" in line}) == 2, lines  # laterlib: parent and template


def test_heavy_preload_is_still_honoured_by_every_snapshot_and_a_typo_named_once(
        heavy_pytester, tmp_path_factory, monkeypatch):
    """heavy_preload names ``preonly`` (which no test module imports) and a typo; the modules import
    heavylib, so a snapshot replaces the session-start template. The snapshot imports ``preonly``
    too (the parent never did), and the typo, which both templates fail to import, is named once."""
    site = tmp_path_factory.mktemp("site")
    (site / "heavylib.py").write_text(RECORDS_ITS_IMPORT)
    (site / "preonly.py").write_text("")
    prepend_path(monkeypatch, site)
    monkeypatch.setenv("IMPORT_LOG", str(site / "imports.log"))
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_preload = preonly no_such_module_xyz\n")
    body = USES_IT + "\ndef test_preloaded():\n    import sys\n    assert 'preonly' in sys.modules\n"
    heavy_pytester.makepyfile(test_p1=body, test_p2=body)
    result = heavy_pytester.runpytest_subprocess()
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["test_p1.py *template *", "test_p2.py *template *"])
    assert len([line for line in result.outlines if "no_such_module_xyz" in line]) == 1, result.outlines
    assert len((site / "imports.log").read_text().split()) == 1  # heavylib: by the parent only


class StatusFromElsewhere:
    """A process that has exited and whose status comes a while later from another process, as a
    template's child's does (the template reaps it and sends its status over the socket)."""

    def __init__(self, delay: float) -> None:
        self._popen = subprocess.Popen([sys.executable, "-c", "pass"])
        self.pid = self._popen.pid
        self._delay = delay
        self._known_at: float | None = None
        self.polls = 0

    def poll(self) -> int | None:
        self.polls += 1
        if self._known_at is None:  # exited? (left unreaped: its pidfd stays readable)
            if os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                self._known_at = time.monotonic() + self._delay
            return None
        return 0 if time.monotonic() >= self._known_at else None

    def send_signal(self, sig: int) -> None:
        self._popen.send_signal(sig)

    def reap(self) -> None:
        self._popen.wait()


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="the pidfd wait is Linux's")
def test_waiting_for_a_status_that_comes_from_elsewhere_does_not_spin():
    """Between a template child's exit and the template's word on it, its pidfd stays readable: the
    wait must not select on it again and again (it spun a core at every child's end, beside the
    next child) but ask every millisecond."""
    proc = StatusFromElsewhere(delay=0.2)
    try:
        assert draining.wait(proc, 10) == 0
    finally:
        proc.reap()
    assert proc.polls < 1000  # ~200 (0.2 s at 1 ms); a spinning wait asks tens of thousands of times


FROZEN_AT_IMPORT = """
import gc, pytest
pytestmark = pytest.mark.requires_heavy_ram
with open("frozen_at_import.txt", "a") as out:
    out.write(f"{gc.get_freeze_count()}\\n")

def test_one():
    pass
"""


@pytest.mark.parametrize(("args", "frozen"), [(("--heavy-start", "template"), True),
                                              (("--heavy-start", "template", "--heavy-find-leaks"), False),
                                              (("--heavy-isolate", "never"), False)],
                         ids=["template", "find-leaks", "no-template"])
def test_the_heap_is_frozen_where_the_template_is_forked(heavy_pytester, args, frozen):
    """A template shares pytest's pages until one of the two writes them; a full collection in pytest
    (torch's import runs two) writes to every object it walks: the objects the template shares are
    frozen at its fork, unless the freeze is off (--heavy-find-leaks) or there is no template. The
    first line is the parent's import of the first module, while it collects."""
    heavy_pytester.makepyfile(test_a=FROZEN_AT_IMPORT, test_b=FROZEN_AT_IMPORT)
    heavy_pytester.runpytest_subprocess("-p", "no:randomly", *args).assert_outcomes(passed=2)
    at_import = int((heavy_pytester.path / "frozen_at_import.txt").read_text().split()[0])
    assert (at_import > 10_000) if frozen else at_import == 0
