"""``--heavy-workers auto`` end to end: real children on GPUs of the fake NVML (test/fakes/pynvml.py).

The pytest parent probes the fake's devices as real ones (``-p pynvml`` imports the binding before the
probe, as an installed driver lets it load) and samples them through NVML; children "allocate" with
``pynvml.fake_allocate``, which the parent sees in the device's memory and process list while the child
lives, and which fails with "CUDA out of memory" when the device is full. Modules meet through files
(bounded waits), so every overlap a test relies on happens whatever the machine's speed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

FAKES = Path(__file__).resolve().parent / "fakes"
GIB = 1024


def device(n: int, total_gib: int) -> dict:
    return {"uuid": f"GPU-{n}{n}{n}{n}aaaa-1111-2222-3333-444444444444", "name": "NVIDIA Fake",
            "total_mib": total_gib * GIB, "used_mib": 0, "compute_mode": 0}


@pytest.fixture
def fake_gpus(heavy_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch):
    def machine(*devices: dict) -> pytest.Pytester:
        path = os.pathsep.join(filter(None, [str(FAKES), os.environ.get("PYTHONPATH")]))
        monkeypatch.setenv("PYTHONPATH", path)
        monkeypatch.setenv("FAKE_PYNVML", json.dumps({"devices": list(devices)}))
        monkeypatch.setenv("FAKE_PYNVML_STATE", str(heavy_pytester.path / "allocations.jsonl"))
        monkeypatch.setenv("PYTEST_HEAVY_ASSUME", "ram=16GiB")  # the GPUs come from the (fake) probe
        monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(heavy_pytester.path / "no-mps"))
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_durations_path = durations.json\n")
        return heavy_pytester

    return machine


MODULE = """
import os, time, pytest, pynvml
pytestmark = [pytest.mark.requires_gpu, pytest.mark.requires_gpu_isolation]

def wait_for(path):
    deadline = time.time() + 30
    while not os.path.exists(path):
        assert time.time() < deadline, f"{{path}} never appeared"
        time.sleep(0.05)

def test_allocate():
    with open("visible-{name}", "w") as fh:
        fh.write(os.environ.get("CUDA_VISIBLE_DEVICES", ""))
    pynvml.fake_allocate({mib})
    open("{name}-holds", "w").close()
    time.sleep(0.4)  # held while the parent's monitor samples (every 0.1 s)
    {then}
"""


# Starts once test_a holds its 6 GiB; the first attempt runs out of memory, the one alone does not.
OOM_MODULE = f"""
import os, time, pytest, pynvml
pytestmark = [pytest.mark.requires_gpu, pytest.mark.requires_gpu_isolation]

def test_allocate():
    deadline = time.time() + 30
    while not os.path.exists("a-holds"):
        assert time.time() < deadline, "test_a never allocated"
        time.sleep(0.05)
    try:
        pynvml.fake_allocate({6 * GIB})
    finally:
        open("b-tried", "w").close()
"""


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_subprocess("-p", "pynvml", "--heavy-workers", "auto", "--heavy-report",
                                         "heavy.json", "--heavy-timeout", "120", *args)


def rows(pytester: pytest.Pytester) -> dict[str, dict]:
    return {r["unit"]: r for r in json.loads((pytester.path / "heavy.json").read_text())["modules"]}


# test_b allocates only once test_c holds its memory, and holds its own until a second after test_c's test
# is over; test_c takes longer than test_a. So test_b's memory appears after test_a started and is still
# held when test_a ends (test_a and test_b share GPU 0 in the second run).
LATE_NEIGHBOUR = f"""
import os, time, pytest, pynvml
pytestmark = [pytest.mark.requires_gpu, pytest.mark.requires_gpu_isolation]

def wait_for(path):
    deadline = time.time() + 30
    while not os.path.exists(path):
        assert time.time() < deadline, f"{{path}} never appeared"
        time.sleep(0.05)

def test_allocate():
    with open("visible-b", "w") as fh:
        fh.write(os.environ["CUDA_VISIBLE_DEVICES"])
    wait_for("c-holds")
    pynvml.fake_allocate({4 * GIB})
    wait_for("c-done")
    time.sleep(1)
"""


def test_unknown_peaks_run_alone_then_recorded_peaks_pack(fake_gpus):
    pytester = fake_gpus(device(0, 16), device(1, 16))
    pytester.makepyfile(
        test_a=MODULE.format(name="a", mib=4 * GIB, then="pass"),
        test_b=LATE_NEIGHBOUR,
        test_c=MODULE.format(name="c", mib=4 * GIB, then="open('c-done', 'w').close(); time.sleep(0.6)"),
    )
    result = run(pytester)
    result.assert_outcomes(passed=3)
    first = rows(pytester)
    uuids = {device(0, 16)["uuid"]: 0, device(1, 16)["uuid"]: 1}
    for name, row in first.items():
        visible = (pytester.path / f"visible-{name[5]}").read_text()
        assert row["gpus"] == [uuids[visible]]  # pinned by UUID, and the table names that GPU
        assert row["beside"] == []  # no recorded peak: alone on its GPU
        assert row["peak_gpu_per_device_mib"] == [4 * GIB]
        assert row["released"] == "yes", row  # the fake frees a process's memory when it exits
    cached = json.loads((pytester.path / ".pytest_cache/v/heavy/peaks").read_text())
    assert cached["test_a.py"]["gpu_mib"] == [4 * GIB]
    assert not (pytester.path / "durations.json.peaks.json").exists()  # written only when asked

    for done in ("c-holds", "c-done"):  # the second run meets again
        (pytester.path / done).unlink()
    result = run(pytester, "--heavy-store-durations")
    result.assert_outcomes(passed=3)
    second = rows(pytester)
    # Longest recorded first: test_b (GPU 0), test_c (GPU 1), then test_a beside test_b (fewest children,
    # most room, lowest index): 3 x 4 GiB on 2 x 16 GiB are packed
    assert {k: (r["gpus"], r["beside"]) for k, r in second.items()} == {
        "test_b.py": ([0], ["test_a.py"]), "test_c.py": ([1], []), "test_a.py": ([0], ["test_b.py"])}
    # test_a ends while test_b, which allocated after test_a started, holds memory on their GPU: what a
    # neighbour holds is not test_a's, which is released all the same
    assert all(r["released"] == "yes" for r in second.values()), second
    committed = json.loads((pytester.path / "durations.json.peaks.json").read_text())
    assert set(committed) == {"test_a.py", "test_b.py", "test_c.py"}
    assert committed["test_c.py"]["gpu_mib"] == [4 * GIB] and committed["test_c.py"]["rss_mib"] > 0
    result.stdout.fnmatch_lines(["heavy schedule (--heavy-workers auto, 2 GPUs): 3 modules in *"])


def test_a_module_that_runs_out_of_gpu_memory_beside_another_is_retried_alone(fake_gpus):
    pytester = fake_gpus(device(0, 10))
    # Recorded at 3 GiB each, so both are packed onto the 10 GiB GPU; each really takes 6 GiB.
    peaks = {m: {"wall_s": 1.0, "rss_mib": 50, "gpu_mib": [3 * GIB]} for m in ("test_a.py", "test_b.py")}
    (pytester.path / "durations.json.peaks.json").write_text(json.dumps(peaks))
    pytester.makepyfile(
        test_a=MODULE.format(name="a", mib=6 * GIB, then="wait_for('b-tried')"),
        test_b=OOM_MODULE,
    )
    result = run(pytester, "-rA")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["test_b.py *1 passed*(retried alone after OOM while sharing GPU 0)"])
    assert "FAILED" not in result.stdout.str()
    assert rows(pytester)["test_b.py"]["beside"] == ["test_a.py"]


FIND_USED = """def test_allocate():
    pynvml.nvmlInit()
    uuid = os.environ["CUDA_VISIBLE_DEVICES"]
    handle = next(h for h in map(pynvml.nvmlDeviceGetHandleByIndex, range(pynvml.nvmlDeviceGetCount()))
                  if pynvml.nvmlDeviceGetUUID(h) == uuid)
    with open("b-found", "w") as fh:
        fh.write(str(pynvml.nvmlDeviceGetMemoryInfo(handle).used >> 20))"""


def test_the_next_child_on_a_gpu_waits_until_the_previous_ones_memory_is_released(fake_gpus):
    pytester = fake_gpus(device(0, 16))
    # test_a's memory outlives its process by a second (the driver frees asynchronously); test_b, the next
    # child on that GPU (no peaks recorded: each runs alone), notes what it finds there when it starts.
    pytester.makepyfile(
        test_a=MODULE.replace("pynvml.fake_allocate({mib})", "pynvml.fake_allocate({mib}, linger_s=1.0)")
        .format(name="a", mib=4 * GIB, then="pass"),
        test_b=MODULE.format(name="b", mib=GIB, then="pass").replace("def test_allocate():", FIND_USED),
    )
    result = run(pytester)
    result.assert_outcomes(passed=2)
    assert (pytester.path / "b-found").read_text() == "0"
    assert rows(pytester)["test_a.py"]["released"].startswith("after "), rows(pytester)["test_a.py"]


RAM_MODULE = """
import os, time, pytest
pytestmark = pytest.mark.requires_heavy_ram

def test_span():
    start = time.time()
    open("{me}-started", "w").close()
    deadline = time.time() + {wait}
    while not os.path.exists("{other}-started") and time.time() < deadline:
        time.sleep(0.05)
    with open("spans", "a") as fh:
        fh.write(f"{{start}} {{time.time()}}\\n")
"""


@pytest.mark.parametrize(("rss_gib", "together"), [(4, True), (10, False)])
def test_heavy_ram_modules_run_side_by_side_while_their_recorded_rss_fits(heavy_pytester, rss_gib, together):
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_durations_path = durations.json\n")
    record = {"wall_s": 1.0, "rss_mib": rss_gib * GIB, "gpu_mib": None}
    peaks = {"test_a.py": record, "test_b.py": record}
    (heavy_pytester.path / "durations.json.peaks.json").write_text(json.dumps(peaks))
    # Together, each waits (up to 30 s) for the other to start; apart, the first waits 1 s in vain.
    wait = 30 if together else 1
    heavy_pytester.makepyfile(test_a=RAM_MODULE.format(me="a", other="b", wait=wait),
                              test_b=RAM_MODULE.format(me="b", other="a", wait=wait))
    result = heavy_pytester.runpytest_subprocess("-p", "no:cacheprovider", "--heavy-workers", "auto",
                                                 "--heavy-assume", "gpus=0,ram=16GiB,cpus=4")
    result.assert_outcomes(passed=2)
    (s1, e1), (s2, e2) = sorted(tuple(map(float, line.split()))
                                for line in (heavy_pytester.path / "spans").read_text().splitlines())
    assert (s2 < e1) is together  # 2 x 4 GiB fit in 16 GiB; 2 x 10 GiB do not
