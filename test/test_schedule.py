"""The packing decisions of ``--heavy-workers auto`` (isolation/schedule/packing.py), as pure functions of
the machine (``Hardware``, as ``--heavy-assume`` builds it) and the recorded peaks: no session, no process.
The controller's use of them, with scripted children, is in test_controller.py; with real children and
the fake NVML, in test_parallel_gpus.py.
"""

from __future__ import annotations

import dataclasses
import json
import sys

import pytest

from pytest_heavy import assume, hardware
from pytest_heavy.isolation.schedule import Job, Placement
from pytest_heavy.isolation.schedule.count import CountScheduler
from pytest_heavy.isolation.schedule.packing import PackingScheduler
from pytest_heavy.split.durations import ModulePeaks

GIB = 1024


def machine(spec: str) -> hardware.Hardware:
    probed = hardware.Hardware(cpus=8, ram_total_mib=64 * GIB, ram_available_mib=64 * GIB)
    return assume.apply_assume(probed, assume.parse_assume(spec))


def packer(spec: str, peaks: dict[str, ModulePeaks], ram_need_gib: float = 48) -> PackingScheduler:
    return PackingScheduler(machine(spec), peaks, tolerance_mib=256, ram_need_mib=int(ram_need_gib * GIB))


def gpu_peak(gib: float, wall: float = 10.0, rss_gib: float = 1.0) -> ModulePeaks:
    return ModulePeaks(wall_s=wall, rss_mib=rss_gib * GIB, gpu_mib=(gib * GIB,))


def start_all(sched, jobs: list[Job]) -> list[tuple[str, tuple[int, ...], bool]]:
    """Start jobs while the scheduler places any: [(name, GPUs, exclusive)] in the order it chose."""
    ready, started = list(jobs), []
    while (picked := sched.pick(ready)) is not None:
        job, placement = picked
        ready.remove(job)
        sched.started(job, placement)
        started.append((job.name, placement.gpus, placement.exclusive))
    return started


def gpu_jobs(*names: str, **kwargs) -> list[Job]:
    return [Job(name, gpus=1, **kwargs) for name in names]


def test_known_peaks_share_a_default_mode_gpu_while_they_fit():
    # 80 GiB: 30 + 30 fit (with 256 MiB tolerance each), a third 30 does not
    sched = packer("gpus=1x80GiB", {n: gpu_peak(30) for n in "abc"})
    assert start_all(sched, gpu_jobs("a", "b", "c")) == [("a", (0,), False), ("b", (0,), False)]
    sched.finished(Job("a", gpus=1))
    assert sched.pick(gpu_jobs("c")) == (Job("c", gpus=1), Placement((0,), False))


def test_exclusive_process_without_mps_takes_one_child_per_gpu_and_with_mps_several():
    peaks = {n: gpu_peak(10) for n in "abc"}
    alone = packer("gpus=2x80GiB,compute_mode=exclusive_process,mps=off", peaks)
    assert [gpus for _, gpus, _ in start_all(alone, gpu_jobs("a", "b", "c"))] == [(0,), (1,)]
    shared = packer("gpus=2x80GiB,compute_mode=exclusive_process,mps=on", peaks)
    assert len(start_all(shared, gpu_jobs("a", "b", "c"))) == 3
    prohibited = packer("gpus=1x80GiB,compute_mode=prohibited", peaks)
    assert len(start_all(prohibited, gpu_jobs("a", "b"))) == 1


def test_children_spread_over_gpus_before_sharing_one():
    sched = packer("gpus=4x80GiB", {n: gpu_peak(5) for n in "abcdef"})
    placed = start_all(sched, gpu_jobs(*"abcdef"))
    assert [gpus for _, gpus, _ in placed] == [(0,), (1,), (2,), (3,), (0,), (1,)]


def test_a_module_without_a_recorded_gpu_peak_runs_alone_and_nobody_joins_it():
    peaks = {"known": gpu_peak(1), "cpu_record": ModulePeaks(5.0, 100.0, None)}  # measured without a GPU
    sched = packer("gpus=1x80GiB", peaks)
    assert start_all(sched, gpu_jobs("new", "known")) == [("new", (0,), True)]  # unrecorded goes first
    assert sched.pick(gpu_jobs("known")) is None
    sched.finished(Job("new", gpus=1))
    assert start_all(sched, gpu_jobs("cpu_record", "known")) == [("known", (0,), False)]  # longest first
    assert sched.pick(gpu_jobs("cpu_record")) is None  # no GPU peak recorded: it waits for an idle GPU


def test_longest_recorded_module_first_and_an_oom_rerun_before_everything():
    peaks = {"short": gpu_peak(1, wall=2), "long": gpu_peak(1, wall=50), "mid": gpu_peak(1, wall=9)}
    sched = packer("gpus=1x80GiB,compute_mode=exclusive_process", peaks)
    ready = gpu_jobs("short", "long", "mid")
    assert [j.name for j in sched.order(ready)] == ["long", "mid", "short"]
    rerun = Job("short", gpus=1, alone=True)
    assert [j.name for j in sched.order([*ready[1:], rerun])] == ["short", "long", "mid"]


def test_an_oom_rerun_waits_for_an_idle_gpu_and_keeps_it_to_itself():
    peaks = {n: gpu_peak(10) for n in "abc"}
    sched = packer("gpus=1x80GiB", peaks)
    sched.started(Job("a", gpus=1), Placement((0,)))
    rerun = Job("b", gpus=1, alone=True)
    assert sched.pick([rerun]) is None
    sched.finished(Job("a", gpus=1))
    assert sched.pick([rerun]) == (rerun, Placement((0,), exclusive=True))
    sched.started(rerun, Placement((0,), exclusive=True))
    assert sched.pick(gpu_jobs("c")) is None


def test_multi_gpu_modules_get_that_many_gpus():
    peaks = {"pair": gpu_peak(60), "one": gpu_peak(60), "quad": gpu_peak(60)}
    sched = packer("gpus=3x80GiB,compute_mode=exclusive_process", peaks)
    jobs = [Job("pair", gpus=2), Job("one", gpus=1), Job("quad", gpus=4)]
    # quad asks for more GPUs than exist (--heavy-ignore-gpu-check): it gets all of them, once they are idle
    assert start_all(sched, jobs) == [("pair", (0, 1), False), ("one", (2,), False)]
    sched.finished(jobs[0])
    assert sched.pick([jobs[2]]) is None
    sched.finished(jobs[1])
    assert sched.pick([jobs[2]]) == (jobs[2], Placement((0, 1, 2), False))


def test_a_module_larger_than_the_gpu_still_runs_on_an_idle_one():
    sched = packer("gpus=1x24GiB", {"big": gpu_peak(40), "small": gpu_peak(1)})
    assert start_all(sched, gpu_jobs("big", "small")) == [("big", (0,), False)]


def test_heavy_ram_modules_share_the_ram_by_recorded_rss():
    peaks = {n: ModulePeaks(10.0, 20 * GIB, None) for n in "abc"}
    sched = packer("gpus=0,ram=64GiB", peaks)
    jobs = [Job(n, heavy_ram=True) for n in "abc"]
    assert [name for name, _, _ in start_all(sched, jobs)] == ["a", "b", "c"]  # 60 of 64 GiB
    sched = packer("gpus=0,ram=50GiB", peaks)
    assert [name for name, _, _ in start_all(sched, jobs)] == ["a", "b"]


def test_an_unrecorded_heavy_ram_module_counts_as_heavy_ram_gib():
    sched = packer("gpus=0,ram=64GiB", {"a": ModulePeaks(10.0, 20 * GIB, None)}, ram_need_gib=48)
    jobs = [Job("new", heavy_ram=True), Job("a", heavy_ram=True), Job("cpu")]
    assert [name for name, _, _ in start_all(sched, jobs)] == ["new", "cpu"]  # 48 + 20 > 64


def test_children_without_gpu_or_heavy_ram_are_bounded_by_cpus():
    sched = packer("gpus=0,cpus=2", {})
    assert len(start_all(sched, [Job(f"m{i}") for i in range(5)])) == 2


def test_gpu_memory_in_use_at_the_probe_is_not_offered():
    idle = machine("gpus=1x80GiB")
    busy = dataclasses.replace(idle, gpus=(dataclasses.replace(idle.gpus[0], used_mib=50 * GIB),))
    peaks = {n: gpu_peak(16) for n in "ab"}

    def started(hw: hardware.Hardware) -> int:
        sched = PackingScheduler(hw, peaks, tolerance_mib=256, ram_need_mib=0)
        return len(start_all(sched, gpu_jobs("a", "b")))

    assert started(idle) == 2
    assert started(busy) == 1  # 30 GiB free: the second 16 GiB (plus tolerance) does not fit beside the first


@pytest.mark.parametrize(("workers", "expected"), [(1, ["a"]), (2, ["a", "b"])])
def test_count_scheduler_keeps_collection_order_and_one_routed_gpu_child(workers, expected):
    sched = CountScheduler(workers)
    assert [name for name, _, _ in start_all(sched, [Job("a"), Job("b"), Job("c")])][:workers] == expected
    routed = CountScheduler(3)
    jobs = [Job("g1", routed=True), Job("g2", routed=True), Job("cpu")]
    assert [name for name, _, _ in start_all(routed, jobs)] == ["g1"]  # g2 blocks the queue behind it


# --- pytest-heavy doctor --plan: the same decisions, printed from the recorded peaks ------------------


def test_doctor_plan_prints_the_packing_from_recorded_peaks(heavy_pytester):
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_durations_path = durations.json\n")
    module = "import pytest\npytestmark = [pytest.mark.requires_gpu, pytest.mark.requires_gpu_isolation]\n" \
             "def test_x(): raise SystemExit('doctor --plan must run nothing')\n"
    heavy_pytester.makepyfile(test_long=module, test_mid=module, test_short=module, test_new=module)
    peaks = {"test_long.py": (40, 50_000), "test_mid.py": (20, 30_000), "test_short.py": (10, 30_000)}
    (heavy_pytester.path / "durations.json.peaks.json").write_text(json.dumps(
        {m: {"wall_s": w, "rss_mib": 100, "gpu_mib": [g]} for m, (w, g) in peaks.items()}))
    result = heavy_pytester.run(sys.executable, "-m", "pytest_heavy.cli", "doctor", "--plan",
                                "--heavy-assume", "gpus=2x80GiB,ram=64GiB")
    assert result.ret == 0, result.stderr.str()
    result.stdout.fnmatch_lines([
        "plan for --heavy-workers auto on: 2x assumed GPU 80GiB (default)*",
        "module         GPU  start  end    beside  recorded",
        "test_new.py    0    0.0s   23.3s  0       no: alone",  # unrecorded: first, alone, mean wall time
        "test_long.py   1    0.0s   40.0s  2       yes",  # longest recorded first
        "test_mid.py    1    0.0s   20.0s  1       yes",  # 50,000 + 30,000 MiB + 2 x 256 fit in 80 GiB
        "test_short.py  1    20.0s  30.0s  1       yes",  # not beside test_new, which has GPU 0 to itself
        "makespan 40.0s against 93.3s one at a time (2.3x), from recorded wall times",
        "1 module(s) without recorded peaks run alone*",
    ])
    exclusive = heavy_pytester.run(sys.executable, "-m", "pytest_heavy.cli", "doctor", "--plan", "--json",
                                   "--heavy-assume", "gpus=1x80GiB,compute_mode=exclusive_process")
    doc = json.loads(exclusive.stdout.str())
    assert [(m["module"], round(m["start_s"], 1)) for m in doc["modules"]] == [
        ("test_new.py", 0.0), ("test_long.py", 23.3), ("test_mid.py", 63.3), ("test_short.py", 83.3)]


# --- the option, the ini key and the marker the scheduler reads ---------------------------------------


@pytest.mark.parametrize(("args", "ini", "named"), [
    (["--heavy-workers", "0"], "", "--heavy-workers 0: expected a whole number >= 1 or auto"),
    (["--heavy-workers", "lots"], "", "--heavy-workers lots: expected*"),
    ([], "heavy_workers = many", "ini heavy_workers = 'many': expected*"),
])
def test_bad_workers_are_a_usage_error_naming_the_option(heavy_pytester, args, ini, named):
    heavy_pytester.makeini(f"[pytest]\n{ini}\n")
    heavy_pytester.makepyfile("def test_x(): pass\n")
    result = heavy_pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{named}*"])


def test_ini_heavy_workers_auto_packs_and_the_option_wins(heavy_pytester):
    heavy_pytester.makeini("[pytest]\nheavy_workers = auto\nheavy_ram_gib = 4\n")
    body = "import pytest\npytestmark = pytest.mark.requires_heavy_ram\ndef test_x(): pass\n"
    heavy_pytester.makepyfile(test_a=body, test_b=body)
    result = heavy_pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["heavy schedule (--heavy-workers auto, no GPU): 2 modules in *"])
    result = heavy_pytester.runpytest_subprocess("-p", "no:cacheprovider", "--heavy-workers", "1")
    assert "heavy schedule" not in result.stdout.str()


def test_requires_gpu_count_gates_on_the_number_of_gpus(heavy_pytester):
    heavy_pytester.makepyfile("import pytest\n@pytest.mark.requires_gpu(count=2)\ndef test_pair(): pass\n"
                              "@pytest.mark.requires_gpu\ndef test_one(): pass\n")
    result = heavy_pytester.runpytest("-rs", "--heavy-assume", "gpus=1x80GiB")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*needs 2 GPUs (requires_gpu(count=2)): 1 visible*"])
    heavy_pytester.runpytest("--heavy-assume", "gpus=2x80GiB").assert_outcomes(passed=2)


def test_bad_gpu_count_names_the_test(heavy_pytester):
    heavy_pytester.makepyfile("import pytest\n@pytest.mark.requires_gpu(count='two')\ndef test_x(): pass\n")
    result = heavy_pytester.runpytest("--heavy-assume", "gpus=2x80GiB")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_x: requires_gpu expects a whole number of GPUs*'two'*"])
