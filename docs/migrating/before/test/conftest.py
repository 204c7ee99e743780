"""The hand-written test infrastructure: capability detection, gating, CI mode, options, cleanup."""

import gc
import os
import shutil
import subprocess

import pytest


def pytest_addoption(parser):
    parser.addoption("--skip-resource-checks", action="store_true", help="run tests whatever the hardware")
    parser.addoption("--run-slow", action="store_true", help="include slow tests")


def gpu_count():
    """NVIDIA GPUs from nvidia-smi (importing torch here would put a CUDA context in pytest's process)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    out = subprocess.run([smi, "-L"], capture_output=True, text=True).stdout
    return sum(line.startswith("GPU ") for line in out.splitlines())


def ram_gb():
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


@pytest.fixture
def backend():
    """The project's own plumbing: which vLLM to talk to."""
    return os.environ.get("VLLM_URL", "http://localhost:8000")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--run-slow") or os.environ.get("RUN_SLOW") == "1"
    if not run_slow and "slow" not in (config.option.markexpr or ""):
        slow = [item for item in items if item.get_closest_marker("slow")]
        items[:] = [item for item in items if not item.get_closest_marker("slow")]
        config.hook.pytest_deselected(items=slow)
    ci = os.environ.get("CICD") == "1"
    checks = not config.getoption("--skip-resource-checks")
    gpus, ram = gpu_count(), ram_gb()
    for item in items:
        if ci and item.get_closest_marker("qualitative"):
            item.add_marker(pytest.mark.skip(reason="CICD=1: qualitative tests are skipped in CI"))
        if checks and item.get_closest_marker("require_gpu") and gpus == 0:
            item.add_marker(pytest.mark.skip(reason="needs a GPU"))
        mark = item.get_closest_marker("require_ram")
        if checks and mark is not None:
            need = mark.kwargs.get("min_gb", mark.args[0] if mark.args else 0)
            if ram < need:
                item.add_marker(pytest.mark.skip(reason=f"needs {need} GB RAM, this machine has {ram:.0f}"))


@pytest.fixture(autouse=True)
def _free_memory(request):
    yield
    if request.node.get_closest_marker("require_gpu") or os.environ.get("CICD") == "1":
        gc.collect()
