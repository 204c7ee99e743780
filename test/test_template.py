"""The template process: forked from pytest at session start, it imports what heavy modules use and
forks their children. Checked end to end in real sessions: what it preloads, that neither it nor the
parent ever creates a CUDA context (fake NVML, torch double), that a child's environment never touches
the disk, and that a module of thousands of tests still reaches its child."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
