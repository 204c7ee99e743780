"""Fork from the parent whenever it is safe, never where a child would hang.

``import torch`` starts an idle native thread; a parallel torch op starts GNU OpenMP's pool, and a
child forked after that waits forever in its first parallel op. ``isolation/threads.py`` tells them
apart. Checked twice: on a real process (the classifier before and after the pool starts), and in
real sessions, where every test module imports torch and the heavy report names the start method.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import textwrap

import pytest

NEEDS_TORCH = pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch is not installed")
TIMEOUT = ("-o", "heavy_timeout_s=300")  # a hang would fail the run, never block the suite

# Small enough to stay below ATen's grain size (32,768 elements): no parallel region, no pool.
IMPORTS_TORCH = """
import torch, pytest
pytestmark = pytest.mark.requires_heavy_ram
W = torch.ones(64, 64)
def test_op():
    assert (torch.ones(128, 128) @ torch.ones(128, 128)).sum().item() == 128 ** 3
"""
# Two threads whatever the machine's cores, and an op big enough to run in parallel: the pool starts.
STARTS_POOL = "torch.set_num_threads(2)\nPOOL = (torch.ones(256, 256) @ torch.ones(256, 256)).sum().item()\n"


def run_script(body: str) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter (this process must not start a pool of its own)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(body)], capture_output=True, text=True,
                          timeout=120)


def start_methods(pytester: pytest.Pytester, *args: str) -> dict[str, str]:
    """Run a session (all passing) and return each isolated module's start method from --heavy-report."""
    result = pytester.runpytest_subprocess("--heavy-report", "report.json", *TIMEOUT, *args)
    assert result.ret == 0, result.stdout.str()
    modules = json.loads((pytester.path / "report.json").read_text())["modules"]
    return {m["unit"]: m["start_method"] for m in modules}


@NEEDS_TORCH
def test_the_idle_thread_of_import_torch_allows_fork_and_the_openmp_pool_does_not():
    done = run_script("""
        from pytest_heavy.isolation import threads
        from pytest_heavy.isolation.launch import base
        threads.record_thread_baseline()
        import torch
        print("after import:", len(threads.foreign_threads()), base.fork_unsafe_reason())
        torch.set_num_threads(2)
        torch.ones(256, 256) @ torch.ones(256, 256)
        print("after a parallel op:", base.fork_unsafe_reason())
    """)
    assert done.returncode == 0, done.stderr
    after_import, after_op = done.stdout.splitlines()
    assert after_import == "after import: 1 None"  # one foreign thread, and it is harmless
    assert after_op.startswith("after a parallel op: an OpenMP pool (libgomp"), after_op


def test_a_python_thread_makes_fork_unsafe_until_it_ends():
    done = run_script("""
        import threading
        from pytest_heavy.isolation import threads
        from pytest_heavy.isolation.launch import base
        threads.record_thread_baseline()
        print(base.fork_unsafe_reason())
        release = threading.Event()
        worker = threading.Thread(target=release.wait, name="waiter")
        worker.start()
        print(base.fork_unsafe_reason())
        release.set()
        worker.join()
        print(base.fork_unsafe_reason())
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["None", "1 Python thread started since the session began (waiter)",
                                        "None"]


@pytest.mark.skipif(sys.version_info < (3, 12), reason="os.fork() warns about threads from Python 3.12")
def test_a_fork_the_rule_allowed_does_not_warn_even_under_warnings_as_errors():
    done = run_script("""
        import os, threading, warnings
        from pytest_heavy.isolation import threads
        warnings.simplefilter("error")
        release = threading.Event()
        threading.Thread(target=release.wait).start()
        pid = threads.fork_quietly()
        if pid == 0:
            os._exit(0)
        release.set()
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
    """)
    assert (done.returncode, done.stdout, done.stderr) == (0, "0\n", "")


@NEEDS_TORCH
@pytest.mark.parametrize(("start", "method"), [("auto", "template"), ("fork", "fork")])
def test_modules_that_import_torch_start_from_the_template_or_the_parent(heavy_pytester, start, method):
    """No heavy_preload: the template imports torch because the heavy modules did; asked for, fork from
    the parent still works after collection imported torch (its idle thread is allowed)."""
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\n")
    heavy_pytester.makepyfile(test_t1=IMPORTS_TORCH, test_t2=IMPORTS_TORCH, test_t3=IMPORTS_TORCH)
    assert start_methods(heavy_pytester, "--heavy-start", start) == dict.fromkeys(
        ["test_t1.py", "test_t2.py", "test_t3.py"], method)


@NEEDS_TORCH
@pytest.mark.parametrize("preload", ["", "torch"])
def test_an_openmp_pool_started_at_import_in_the_parent_leaves_the_template_alone(heavy_pytester, preload):
    """The pool starts in the parent while it collects test_t2; the template was forked before, so
    every child still starts from it, and none hangs on its first parallel op."""
    heavy_pytester.makeini(f"[pytest]\nheavy_ram_gib = 4\nheavy_preload = {preload}\n")
    parallel_test = "def test_parallel():\n    assert (torch.ones(256, 256) @ torch.ones(256, 256)).sum()\n"
    heavy_pytester.makepyfile(test_t1=IMPORTS_TORCH + parallel_test,
                              test_t2=IMPORTS_TORCH + STARTS_POOL + parallel_test)
    result = heavy_pytester.runpytest_subprocess(*TIMEOUT)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["test_t1.py *template *", "test_t2.py *template *"])
    assert "unsafe" not in result.stdout.str() and "refused" not in result.stdout.str()


@NEEDS_TORCH
def test_a_light_test_that_starts_the_pool_in_the_parent_leaves_the_template_alone(heavy_pytester):
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\n")
    light = "import torch\ndef test_light():\n    " + STARTS_POOL.replace("\n", "\n    ")
    heavy_pytester.makepyfile(test_1_heavy=IMPORTS_TORCH, test_2_light=light, test_3_heavy=IMPORTS_TORCH)
    assert start_methods(heavy_pytester) == {"test_1_heavy.py": "template", "test_3_heavy.py": "template"}


@NEEDS_TORCH
def test_a_package_that_starts_the_pool_at_import_is_named_once_and_children_fork_from_the_parent(
        heavy_pytester):
    """The template imports heavy_preload's ``poolpkg``, whose import runs a parallel op: the template
    cannot fork safely any more. It says so once, and the children fork from the parent (which never
    imported poolpkg, so has no pool)."""
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_preload = poolpkg\n")
    heavy_pytester.makepyfile(poolpkg="import torch\n" + STARTS_POOL,
                              test_t1=IMPORTS_TORCH, test_t2=IMPORTS_TORCH)
    result = heavy_pytester.runpytest_subprocess(*TIMEOUT)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines([
        "pytest-heavy: template refused (the template cannot fork safely: importing poolpkg left an "
        "OpenMP pool (libgomp*) started by a parallel op); no later child starts with it",
        "test_t1.py *fork *", "test_t2.py *fork *",
        "test_t1.py: started with fork: template refused (*importing poolpkg*)"])
    assert result.stdout.str().count("importing poolpkg") == 2  # the line above and the table's, once
