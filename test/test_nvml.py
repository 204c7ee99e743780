"""The NVML reader (hardware.py) and the parent context guard, against fakes of pynvml and torch.

test/fakes/pynvml.py mirrors the real binding's calls, return shapes and NVMLError classes; here it is
loaded as ``pynvml`` in this process, or put on PYTHONPATH for a subprocess. test/fakes/torch_double
stands in for a CUDA context on machines without a GPU (see pytest_heavy.gpu.guard).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pytest_heavy import hardware
from pytest_heavy.gpu import guard

FAKES = Path(__file__).resolve().parent / "fakes"
TORCH_DOUBLE = FAKES / "torch_double"

H100 = {"uuid": "GPU-aaaaaaaa-1111-2222-3333-444444444444", "name": "NVIDIA H100 80GB HBM3",
        "total_mib": 81559, "used_mib": 4, "compute_mode": 3}
A100_MIG = {"uuid": "GPU-bbbbbbbb-1111-2222-3333-444444444444", "name": "NVIDIA A100-SXM4-40GB",
            "total_mib": 40960, "used_mib": 0, "compute_mode": 0, "mig_mode": 1, "max_mig": 3,
            "mig": [{"uuid": "MIG-cccccccc-1111-2222-3333-444444444444", "total_mib": 19968, "used_mib": 13},
                    None,  # an empty slot: NotFound
                    {"uuid": "MIG-dddddddd-1111-2222-3333-444444444444", "total_mib": 9856, "used_mib": 6}]}
V100 = {"uuid": "GPU-eeeeeeee-1111-2222-3333-444444444444", "name": "Tesla V100-SXM2-16GB",
        "total_mib": 16384, "used_mib": 0, "compute_mode": 2, "mig_mode": 0}
T4 = {"uuid": "GPU-ffffffff-1111-2222-3333-444444444444", "name": "Tesla T4", "total_mib": 15360,
      "used_mib": 0, "errors": {"nvmlDeviceGetComputeMode": 3}}
NO_PERMISSION = 4


@pytest.fixture
def nvml(monkeypatch):
    """The fake binding as ``pynvml`` for this test, and no CUDA_VISIBLE_DEVICES."""
    spec = importlib.util.spec_from_file_location("pynvml", FAKES / "pynvml.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "pynvml", module)
    spec.loader.exec_module(module)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return module


def units_of(nvml, *devices):
    nvml.configure({"devices": list(devices)})
    nvml.nvmlInit()
    try:
        return hardware._all_units(nvml)
    finally:
        nvml.nvmlShutdown()


def test_units_carry_compute_modes_memory_and_mig_instances(nvml):
    units = units_of(nvml, H100, A100_MIG, V100, T4)
    assert [(u.index, u.uuid[:12], u.mig, u.compute_mode) for u in units] == [
        (0, "GPU-aaaaaaaa", False, "exclusive_process"),
        (1, "GPU-bbbbbbbb", False, "default"),
        (1, "MIG-cccccccc", True, "default"),  # MIG instances take their device's mode
        (1, "MIG-dddddddd", True, "default"),
        (2, "GPU-eeeeeeee", False, "prohibited"),  # MIG supported but off: no instances
        (3, "GPU-ffffffff", False, "default"),  # compute mode not supported: default
    ]
    assert units[0].name == "NVIDIA H100 80GB HBM3" and (units[0].total_mib, units[0].used_mib) == (81559, 4)
    assert units[2].name == "NVIDIA A100-SXM4-40GB MIG" and units[2].total_mib == 19968


def test_a_device_we_may_not_open_is_left_out(nvml):
    denied = {**V100, "errors": {"nvmlDeviceGetHandleByIndex": NO_PERMISSION}}
    units = units_of(nvml, H100, denied, T4)
    assert [u.uuid[:12] for u in units] == ["GPU-aaaaaaaa", "GPU-ffffffff"]
    # CUDA cannot see the denied device either, so index 1 is the next one it can.
    assert [g.uuid[:12] for g in hardware.select_visible(units, ["1"])] == ["GPU-ffffffff"]
    with pytest.raises(nvml.NVMLError_NoPermission):
        units_of(nvml, denied)


@pytest.mark.parametrize(("raw", "expected"), [
    (None, None),
    ("", []),
    ("0, 1", ["0", "1"]),
    ("0,,1", ["0"]),
    ("1,-1,0", ["1"]),
    ("GPU-aaaa,MIG-cccc", ["GPU-aaaa", "MIG-cccc"]),
])
def test_visible_selectors_read_cuda_visible_devices_like_cuda(raw, expected):
    env = {} if raw is None else {"CUDA_VISIBLE_DEVICES": raw}
    assert hardware.visible_selectors(env) == expected


@pytest.mark.parametrize(("selectors", "expected"), [
    (None, ["GPU-aaaaaaaa", "GPU-bbbbbbbb", "GPU-eeeeeeee"]),  # whole devices only
    (["1", "0"], ["GPU-bbbbbbbb", "GPU-aaaaaaaa"]),  # CUDA's order is the variable's order
    (["GPU-eeeeeeee-1111-2222-3333-444444444444"], ["GPU-eeeeeeee"]),  # full UUID
    (["GPU-bbbb"], ["GPU-bbbbbbbb"]),  # UUID prefix
    (["eeee"], ["GPU-eeeeeeee"]),  # prefix without GPU-
    (["MIG-dddddddd"], ["MIG-dddddddd"]),  # a MIG instance by its UUID
    (["0", "0"], ["GPU-aaaaaaaa"]),
    (["0", "7", "2"], ["GPU-aaaaaaaa"]),  # an index out of range ends the list
    (["2", "GPU-0000", "0"], ["GPU-eeeeeeee"]),  # so does an unknown UUID
    (["bogus"], []),
    ([], []),
])
def test_select_visible_maps_selectors_by_uuid(nvml, selectors, expected):
    units = units_of(nvml, H100, A100_MIG, V100)
    assert [g.uuid[:12] for g in hardware.select_visible(units, selectors)] == expected


@pytest.mark.parametrize(("machine", "visible", "reason"), [
    ({"init_error": 12}, None, "NVML unavailable: libnvidia-ml.so.1 not found"),
    ({"init_error": 9}, None, "NVML unavailable: the NVIDIA driver is not loaded"),
    ({"init_error": 999}, None, "NVML unavailable: Unknown Error"),
    ({"devices": [{**H100, "errors": {"nvmlDeviceGetMemoryInfo": NO_PERMISSION}}]}, None,
     "NVML unavailable: no permission to query the GPUs"),
    ({"devices": []}, None, "NVML sees no GPU"),
    ({"devices": [H100]}, "", "CUDA_VISIBLE_DEVICES hides every GPU"),
    ({"devices": [H100]}, "GPU-nothere", "CUDA_VISIBLE_DEVICES hides every GPU"),
])
def test_probe_gpus_keeps_the_reason_when_there_is_no_gpu(nvml, monkeypatch, machine, visible, reason):
    nvml.configure(machine)
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    gpus, got, driver = hardware.probe_gpus()
    assert (gpus, got) == ((), reason)
    assert driver == ("" if reason.startswith("NVML unavailable") else "550.54.15")  # NVML answered
    assert nvml.init_count() == 0


def test_probe_gpus_returns_the_visible_devices_and_the_driver(nvml, monkeypatch):
    nvml.configure({"driver": "550.54.15", "devices": [H100, A100_MIG]})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "MIG-cccc,0")
    gpus, reason, driver = hardware.probe_gpus()
    assert [(g.uuid[:12], g.mig) for g in gpus] == [("MIG-cccccccc", True), ("GPU-aaaaaaaa", False)]
    assert (reason, driver) == ("", "550.54.15")
    assert nvml.init_count() == 0  # nvmlShutdown ran


def test_nvml_error_reason_for_a_missing_binding():
    assert hardware.nvml_error_reason(ImportError("No module named 'pynvml'")) == (
        "NVML unavailable: nvidia-ml-py is not installed")


@pytest.mark.skipif(not hardware._nvml_library_missing(), reason="libnvidia-ml.so.1 is present here")
def test_probe_skips_the_binding_without_the_library(monkeypatch):
    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    assert hardware.probe_gpus() == ((), "NVML unavailable: libnvidia-ml.so.1 not found", "")
    assert "pynvml" not in sys.modules


def test_doctor_reports_the_parent_trap_from_nvml(tmp_path):
    """A real process with the fake binding on PYTHONPATH (imported first, as on a machine with a driver)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_HEAVY_", "CUDA_"))}
    env.update(PYTHONPATH=str(FAKES), FAKE_PYNVML=json.dumps({"devices": [H100]}),
               CUDA_MPS_PIPE_DIRECTORY=str(tmp_path / "no-mps"))
    code = "import sys, pynvml; from pytest_heavy.cli import main; sys.exit(main(['doctor', '--json']))"
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["parent_trap_risk"] is True
    assert doc["hardware"]["driver"] == "550.54.15" and not doc["hardware"]["mps"]
    gpus = [(g["uuid"], g["compute_mode"]) for g in doc["hardware"]["gpus"]]
    assert gpus == [(H100["uuid"], "exclusive_process")]
    assert "no MPS control pipe" in doc["hardware"]["mps_detail"]


# --- the parent context guard ---------------------------------------------------------------------


@pytest.mark.parametrize(("link", "comparable", "why"), [
    ("pid:[4026531836]", True, "host pid namespace"),
    ("pid:[4026532514]", False, "inside a pid namespace (pid:[4026532514])"),
    ("nonsense", False, "unreadable pid namespace"),
])
def test_pid_namespace_decides_whether_nvml_pids_are_ours(link, comparable, why):
    got, detail = guard.pids_comparable(link)
    assert got is comparable and why in detail


def test_parent_holds_context_reads_nvml_process_lists(nvml):
    nvml.configure({"devices": [H100, V100]})
    nvml.nvmlInit()
    try:
        held, detail = guard.parent_holds_context(nvml, [0, 1])
        assert held is ("torch" in sys.modules and guard.cuda_initialized())
        nvml.fake_create_context(os.getpid(), index=1, used_mib=500)
        held, detail = guard.parent_holds_context(nvml, [0, 1])
        if guard.pids_comparable()[0]:
            assert (held, detail) == (True, f"NVML lists pytest's pid {os.getpid()} on GPU 1, 500 MiB")
        else:  # in a container: NVML's pids are the host's, only torch can tell
            assert "NVML not asked: inside a pid namespace" in detail and "torch check only" in detail
        nvml.MACHINE["devices"][1]["errors"] = {"nvmlDeviceGetComputeRunningProcesses": NO_PERMISSION}
        if guard.pids_comparable()[0]:
            assert "NVML process list unavailable (Insufficient Permissions)" in guard.parent_holds_context(
                nvml, [0, 1])[1]
    finally:
        nvml.nvmlShutdown()


@pytest.fixture
def guarded(heavy_pytester, monkeypatch):
    """Sessions that run in a subprocess with the torch double first on the path, on a machine with a GPU
    (assumed: without one no test can create a CUDA context, and the guard is not even registered).

    A subprocess, because a torch already imported in this process (real or double) would be reused by
    an in-process session and decide the outcome.
    """
    monkeypatch.setenv("PYTEST_HEAVY_ASSUME", "gpus=1x80GiB,ram=16GiB")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TORCH_DOUBLE),
                                                                   os.environ.get("PYTHONPATH")])))
    return heavy_pytester


def guard_warnings(result) -> list[str]:
    """The guard's warning lines in a session's terminal summary, where it names the first culprit."""
    return [line for line in result.outlines if line.startswith("pytest-heavy: warning: ")]


def test_guard_names_the_first_test_that_left_a_context(guarded):
    guarded.makepyfile(test_ctx="""
        import torch

        def test_clean(): pass
        def test_makes_context(): torch.cuda.init()
        def test_after(): pass
    """)
    result = guarded.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines([
        "pytest-heavy: warning: the pytest parent holds a CUDA context, first seen after "
        "test_ctx.py::test_makes_context (torch.cuda.is_initialized() is True)*"
        "EXCLUSIVE_PROCESS*(1) mark that test*requires_gpu_isolation*"
        "(2) start MPS first (eval \"$(pytest-heavy mps start)\"*"
        "(3) split the run*pytest-heavy split N",
    ])
    [warning] = guard_warnings(result)  # only the first test that left a context: test_after is not named
    assert "first seen after test_ctx.py::test_makes_context (" in warning


def test_guard_is_quiet_when_torch_never_initialized_cuda(guarded):
    guarded.makepyfile(test_quiet="""
        import torch

        def test_imports_only(): assert not torch.cuda.is_initialized()
    """)
    result = guarded.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    assert "CUDA context" not in result.stdout.str()
    assert guard_warnings(result) == []


def test_guard_reports_a_context_made_before_any_test(guarded):
    guarded.makeconftest("import torch\ntorch.cuda.init()\n")
    guarded.makepyfile(test_late="def test_one(): pass")
    result = guarded.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["*CUDA context, first seen before the first test (a conftest, plugin or "
                                 "test module import)*"])
    [warning] = guard_warnings(result)  # no test is blamed for what an import did
    assert "first seen after" not in warning


@pytest.mark.skipif(not guard.pids_comparable()[0],
                    reason="in a pid namespace NVML's pids are not comparable")
def test_guard_sees_a_context_through_nvml(heavy_pytester, monkeypatch):
    """Real (fake) GPUs, no torch: only NVML's process list can show the context."""
    monkeypatch.setenv("PYTHONPATH", str(FAKES))
    monkeypatch.setenv("FAKE_PYNVML", json.dumps({"devices": [{**H100, "compute_mode": 0}]}))
    monkeypatch.setenv("PYTEST_HEAVY_ASSUME", "ram=16GiB")  # the GPUs come from the probe
    heavy_pytester.makepyfile(test_nv="""
        import os, sys, pynvml

        def test_clean(): pass
        def test_context(): pynvml.fake_create_context(os.getpid())
        def test_no_torch(): assert "torch" not in sys.modules
    """)
    # -p pynvml imports the binding before the probe, as an installed driver would let it load.
    result = heavy_pytester.runpytest_subprocess("-p", "pynvml", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["heavy: 1x NVIDIA H100 80GB HBM3 80GiB (default)*",
                                 "*first seen after test_nv.py::test_context (NVML lists pytest's pid * "
                                 "on GPU 0, 500 MiB)*"])
    [warning] = guard_warnings(result)
    assert "first seen after test_nv.py::test_context (" in warning
