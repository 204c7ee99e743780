"""The parent trap on GPUs in EXCLUSIVE_PROCESS mode without MPS: routing, one GPU child at a time, and
refusal (with the offending test named) once the pytest parent holds a CUDA context.

The machine is planned with ``--heavy-assume``; the parent's CUDA context is the torch double's
(``test/fakes/torch_double``), which stands in for real torch on a CPU-only machine.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TORCH_DOUBLE = Path(__file__).resolve().parent / "fakes" / "torch_double"
EXCLUSIVE = "gpus=1x80GiB,compute_mode=exclusive_process,mps=off,ram=16GiB"
WITH_MPS = "gpus=1x80GiB,compute_mode=exclusive_process,mps=on,ram=16GiB"

PARENT_MAKES_CONTEXT = """
import torch

def test_makes_context():
    torch.cuda.init()
"""
GPU_MODULE = """
import pytest

@pytest.mark.requires_gpu
def test_on_gpu(): pass

def test_cpu_neighbour(): pass
"""


@pytest.fixture
def trap(heavy_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Sessions in a subprocess (a torch imported here would decide the outcome) with the torch double."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TORCH_DOUBLE),
                                                                   os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv("PYTEST_HEAVY_ASSUME")
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_examples_dirs = z_examples\n")
    heavy_pytester.makepyfile(test_a_parent=PARENT_MAKES_CONTEXT, test_b_gpu=GPU_MODULE)
    example = heavy_pytester.mkdir("z_examples") / "gpu_example.py"
    example.write_text("# pytest: requires_gpu\nprint('on the GPU')\n")
    return heavy_pytester


def test_gpu_child_is_refused_and_the_offending_test_named(trap: pytest.Pytester) -> None:
    result = trap.runpytest_subprocess("-rA", "-p", "no:cacheprovider", "--heavy-assume", EXCLUSIVE)
    result.assert_outcomes(passed=1, errors=3)
    first_seen = ("the pytest parent holds a CUDA context, first seen after "
                  "test_a_parent.py::test_makes_context")
    result.stdout.fnmatch_lines([
        f"test_b_gpu.py::test_on_gpu: the child process for test_b_gpu.py was not started: {first_seen}*",
        "test_b_gpu.py::test_cpu_neighbour: the child process for test_b_gpu.py was not started*",
        "z_examples/gpu_example.py::example: the child process for z_examples/gpu_example.py "
        "was not started*",
    ])
    out = result.stdout.str()
    assert "pytest-heavy mps start" in out and "pytest-heavy split N" in out
    assert "requires_gpu_isolation" in out
    assert "on the GPU" not in out  # the example never ran
    result.stdout.fnmatch_lines(["test_b_gpu.py *2 error*not started: the parent holds a CUDA context"])


def test_a_gpu_example_run_by_the_parent_is_refused_too(trap: pytest.Pytester) -> None:
    """With isolation off the parent starts examples itself: the same check stands before each GPU one."""
    result = trap.runpytest_subprocess("-rA", "-p", "no:cacheprovider", "--heavy-assume", EXCLUSIVE,
                                       "--heavy-isolate", "never")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["example z_examples/gpu_example.py::example was not started: the pytest "
                                 "parent holds a CUDA context, first seen after "
                                 "test_a_parent.py::test_makes_context*",
                                 "FAILED z_examples/gpu_example.py::example*"])


def test_with_mps_the_same_run_starts_every_gpu_process(trap: pytest.Pytester) -> None:
    result = trap.runpytest_subprocess("-rA", "-p", "no:cacheprovider", "--heavy-assume", WITH_MPS)
    result.assert_outcomes(passed=4)
    assert "was not started" not in result.stdout.str()


def test_without_a_parent_context_gpu_modules_run_isolated(trap: pytest.Pytester) -> None:
    (trap.path / "test_a_parent.py").write_text("def test_clean(): pass\n")
    result = trap.runpytest_subprocess("-rA", "-p", "no:cacheprovider", "--heavy-assume", EXCLUSIVE)
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*heavy modules*", "test_b_gpu.py *2 passed*exit 0"])


def test_gpu_children_run_one_at_a_time_even_with_workers(heavy_pytester: pytest.Pytester) -> None:
    body = """
import time, pytest
pytestmark = pytest.mark.requires_gpu
def test_hold():
    start = time.time()
    time.sleep(0.5)
    with open("spans.txt", "a") as fh:
        fh.write(f"{start} {time.time()}\\n")
"""
    heavy_pytester.makepyfile(test_g1=body, test_g2=body, test_g3=body)
    result = heavy_pytester.runpytest_subprocess("--heavy-workers", "3", "--heavy-assume", EXCLUSIVE)
    result.assert_outcomes(passed=3)
    spans = sorted(tuple(map(float, line.split())) for line in
                   (heavy_pytester.path / "spans.txt").read_text().splitlines())
    assert len(spans) == 3
    assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:], strict=False)), spans
