"""Memory attribution end to end: per-test figures in --heavy-report, heavy_limit_memory, the leak finder.

Generated suites allocate known sizes: RSS by writing bytes (every page touched, so resident), GPU
memory through the fake NVML (test/fakes/pynvml.py), where a test "creates a context" of a known size.
"""

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_heavy.memattr import sampler

# Generated sessions: no cache, and in file order even where pytest-randomly is installed (the tests of a
# generated module build on each other: what one allocates, the next one's figures start from).
NO_SHUFFLE = ("-p", "no:cacheprovider", "-p", "no:randomly")

KNOWN_SIZES = """
import pytest
pytestmark = pytest.mark.requires_heavy_ram
_KEEP = []

def test_keeps_256_mib():
    _KEEP.append(b"\\x01" * (256 << 20))

def test_frees_192_mib_at_once():
    block = b"\\x01" * (192 << 20)
    del block

def test_nothing():
    pass
"""


def figures_in(path: Path) -> dict[str, dict]:
    return {t["nodeid"].split("::")[-1]: t for t in json.loads(path.read_text())["tests"]}


def grew(entry: dict, point: str) -> float:
    return entry["rss_mib"][point] - entry["rss_mib"]["setup_start"]


@pytest.mark.parametrize("isolate,method,process", [("always", "fork", "child"), ("always", "spawn", "child"),
                                                    ("never", "auto", "parent")])
def test_per_test_rss_figures_match_known_allocations(heavy_pytester, isolate, method, process):
    heavy_pytester.makepyfile(test_sizes=KNOWN_SIZES)
    result = heavy_pytester.runpytest_subprocess("--heavy-isolate", isolate, "--heavy-start", method,
                                                 "--heavy-report", "heavy.json", *NO_SHUFFLE)
    result.assert_outcomes(passed=3)
    tests = figures_in(heavy_pytester.path / "heavy.json")
    assert set(tests) == {"test_keeps_256_mib", "test_frees_192_mib_at_once", "test_nothing"}
    keeps, frees, nothing = (tests[n] for n in ("test_keeps_256_mib", "test_frees_192_mib_at_once",
                                                 "test_nothing"))
    assert {t["process"] for t in tests.values()} == {process}
    assert {t["module"] for t in tests.values()} == {"test_sizes.py"}
    assert all(t["outcome"] == "passed" and t["gpu_mib"] is None for t in tests.values())
    # kept: still there at call end and after teardown
    assert 240 <= grew(keeps, "call_end") <= 320 and 240 <= grew(keeps, "teardown_end")
    assert keeps["rss_mib"]["peak"] >= keeps["rss_mib"]["call_end"]
    # freed inside the test: only the peak shows it (the kernel's high-water mark catches it between samples)
    assert frees["rss_mib"]["peak"] - frees["rss_mib"]["setup_start"] >= 180
    assert grew(frees, "teardown_end") < 64
    assert abs(grew(nothing, "teardown_end")) < 32
    assert nothing["rss_mib"]["peak"] < keeps["rss_mib"]["peak"] + 32
    for t in tests.values():
        assert t["start"] <= t["stop"] and t["samples"] and all(len(s) == 3 for s in t["samples"])
    if process == "child":
        assert len({t["pid"] for t in tests.values()}) == 1  # one child for the module


def test_figures_change_neither_junit_nor_user_properties(heavy_pytester):
    heavy_pytester.makepyfile(test_a=KNOWN_SIZES, test_b=KNOWN_SIZES)
    heavy_pytester.makeconftest("""
import os
def pytest_runtest_logreport(report):
    if report.when == "teardown" and not os.environ.get("PYTEST_HEAVY_CHILD"):  # the parent's copy
        with open("props.txt", "a") as fh:
            fh.write(f"{report.nodeid} {sorted(name for name, _ in report.user_properties)}\\n")
""")
    plain = heavy_pytester.runpytest_subprocess("--heavy-isolate", "always", "--junitxml=plain.xml",
                                                *NO_SHUFFLE)
    props_plain = (heavy_pytester.path / "props.txt").read_text()
    (heavy_pytester.path / "props.txt").unlink()
    measured = heavy_pytester.runpytest_subprocess("--heavy-isolate", "always", "--junitxml=measured.xml",
                                                   "--heavy-report", "heavy.json", *NO_SHUFFLE)
    assert plain.ret == measured.ret == 0
    assert (heavy_pytester.path / "props.txt").read_text() == props_plain

    def shape(name: str) -> list:
        root = ET.parse(heavy_pytester.path / name).getroot()
        return [(tc.get("classname"), tc.get("name"), sorted(p.get("name") for p in tc.iter("property")),
                 [c.tag for c in tc]) for tc in root.iter("testcase")]

    assert shape("measured.xml") == shape("plain.xml")
    assert "heavy_memory" not in (heavy_pytester.path / "measured.xml").read_text()
    assert len(json.loads((heavy_pytester.path / "heavy.json").read_text())["tests"]) == 6


def test_nothing_is_measured_unless_asked(heavy_pytester):
    heavy_pytester.makepyfile(test_sizes=KNOWN_SIZES)
    heavy_pytester.makeconftest("""
import os
def pytest_runtest_logreport(report):
    if report.when == "teardown" and not os.environ.get("PYTEST_HEAVY_CHILD"):  # the parent's copy
        with open("attr.txt", "a") as fh:
            fh.write(f"{hasattr(report, 'heavy_memory')}\\n")
""")
    plain = heavy_pytester.runpytest_subprocess("--heavy-isolate", "always", *NO_SHUFFLE)
    plain.assert_outcomes(passed=3)
    assert (heavy_pytester.path / "attr.txt").read_text().split() == ["False"] * 3
    (heavy_pytester.path / "attr.txt").unlink()
    heavy_pytester.runpytest_subprocess("--heavy-isolate", "always", "--heavy-report", "h.json",
                                        *NO_SHUFFLE).assert_outcomes(passed=3)
    assert (heavy_pytester.path / "attr.txt").read_text().split() == ["True"] * 3


GPU_SUITE = """
import os, pynvml, pytest
pytestmark = pytest.mark.requires_heavy_ram

def test_makes_a_context_of_1024_mib():
    pynvml.fake_create_context(os.getpid(), 0, used_mib=1024)

@pytest.mark.heavy_limit_memory(vram="512 MiB")
def test_over_its_vram_limit():
    pynvml.fake_create_context(os.getpid(), 0, used_mib=768)

@pytest.mark.heavy_limit_memory(vram="10 GiB", rss="8 GiB")
def test_within_its_limits():
    pass
"""


@pytest.mark.parametrize("isolate", ["always", "never"])
def test_gpu_figures_per_device_and_vram_limit_through_fake_nvml(fake_gpu, isolate):
    fake_gpu.makepyfile(test_gpu=GPU_SUITE)
    result = fake_gpu.runpytest_subprocess("-p", "pynvml", "--heavy-isolate", isolate, "--heavy-start",
                                           "fork", "--heavy-report", "heavy.json", *NO_SHUFFLE)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*heavy_limit_memory: peak GPU memory 1,792 MiB (GPU 0: 1,792 MiB) exceeds "
                                 "the limit of 512 MiB*"])
    tests = figures_in(fake_gpu.path / "heavy.json")
    made = tests["test_makes_a_context_of_1024_mib"]["gpu_mib"]
    assert made == {"0": {"setup_start": 0.0, "call_end": 1024.0, "teardown_end": 1024.0, "peak": 1024.0}}
    over = tests["test_over_its_vram_limit"]
    assert over["outcome"] == "failed"
    assert over["gpu_mib"]["0"]["setup_start"] == 1024.0 and over["gpu_mib"]["0"]["peak"] == 1792.0
    assert tests["test_within_its_limits"]["outcome"] == "passed"


LIMITS = """
import pytest

@pytest.mark.heavy_limit_memory(rss="64 MiB")
def test_spike_over_the_limit():
    block = b"\\x01" * (320 << 20)
    del block

@pytest.mark.heavy_limit_memory(rss=64)
def test_well_under_64_gib():
    block = b"\\x01" * (64 << 20)

@pytest.mark.heavy_limit_memory(rss="64 MiB")
def test_fails_anyway():
    block = b"\\x01" * (320 << 20)
    assert False, "its own failure"

def test_unmarked():
    block = b"\\x01" * (320 << 20)
"""


@pytest.mark.parametrize("isolate", ["never", "always"])
def test_rss_limit_fails_with_the_measured_peak_without_any_report(heavy_pytester, isolate):
    heavy = "import pytest\npytestmark = pytest.mark.requires_heavy_ram\n"
    heavy_pytester.makepyfile(test_limits=heavy + LIMITS)
    result = heavy_pytester.runpytest_subprocess("--heavy-isolate", isolate, *NO_SHUFFLE,
                                                 "--junitxml=out.xml")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.re_match_lines([
        r"_+ test_spike_over_the_limit _+",
        r"heavy_limit_memory: peak RSS (3\d\d|4\d\d) MiB of the process tree exceeds the limit of 64 MiB "
        r"\(measured from setup start to call end\)",
        r"_+ test_fails_anyway _+",
    ])
    # a test that failed anyway keeps its own failure, with the limit noted in a section of its own
    result.stdout.fnmatch_lines(["E       AssertionError: its own failure", "*",
                                 "*- heavy_limit_memory -*", "heavy_limit_memory: peak RSS * MiB *"])
    failures = {tc.get("name"): tc.find("failure") for tc in ET.parse(heavy_pytester.path / "out.xml").iter(
        "testcase")}
    assert "exceeds the limit of 64 MiB" in failures["test_spike_over_the_limit"].get("message")
    assert failures["test_well_under_64_gib"] is None and failures["test_unmarked"] is None


@pytest.mark.parametrize("args,error", [
    ('rss="lots"', 'heavy_limit_memory(rss=\'lots\'): expected a size such as 80GiB or 512MiB'),
    ("rss=-1", "heavy_limit_memory(rss=-1): must be positive"),
    ('"2 GiB"', "heavy_limit_memory: takes keyword arguments only"),
    ('ram="2 GiB"', "heavy_limit_memory: unknown argument ram"),
    ("", "heavy_limit_memory: give rss="),
])
def test_bad_limit_is_a_usage_error_naming_test_and_marker(heavy_pytester, args, error):
    heavy_pytester.makepyfile(test_bad=f"""
import pytest
@pytest.mark.heavy_limit_memory({args})
def test_it(): pass
""")
    result = heavy_pytester.runpytest_subprocess(*NO_SHUFFLE)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: test_bad.py::test_it: {error}*"])


def test_limit_marker_is_registered_for_strict_markers(heavy_pytester):
    heavy_pytester.makepyfile(test_ok=LIMITS)
    result = heavy_pytester.runpytest_subprocess("--strict-markers", *NO_SHUFFLE, "-k", "under")
    result.assert_outcomes(passed=1, deselected=3)


LIBRARY = """
_CACHE = {}

def load(name, mib):
    if name not in _CACHE:
        _CACHE[name] = b"\\x01" * (mib << 20)
    return _CACHE[name]
"""

LEAKY = """
import pytest, weights
pytestmark = pytest.mark.requires_heavy_ram

@pytest.fixture(scope="module")
def model():
    return weights.load(__name__, 128)

def test_one(model): assert model
def test_two(model): assert model
"""

CLEAN = """
import pytest
pytestmark = pytest.mark.requires_heavy_ram

@pytest.fixture(scope="module")
def model():
    return b"\\x01" * (128 << 20)   # released with the module's fixtures

def test_one(model): assert model
"""

SESSION_HOLDER = """
import pytest

@pytest.fixture(scope="session")
def corpus():
    return bytearray(b"\\x02") * (96 << 20)

def test_reads(corpus): assert corpus
"""


def test_leak_finder_names_module_globals_and_fixtures_in_one_process(heavy_pytester):
    heavy_pytester.syspathinsert()
    heavy_pytester.makepyfile(weights=LIBRARY)
    heavy_pytester.makepyfile(test_a_leaky=LEAKY, test_b_clean=CLEAN, test_c_session=SESSION_HOLDER,
                              test_d_last="def test_last(): pass\n")
    result = heavy_pytester.runpytest_subprocess("--heavy-find-leaks", "--heavy-isolate", "always",
                                                 "--heavy-report", "heavy.json", *NO_SHUFFLE)
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["heavy: --heavy-find-leaks: every module runs in this process, on purpose",
                                 "*- memory kept after teardown (pytest-heavy --heavy-find-leaks) -*"])
    for line in ("test_a_leaky.py keeps 1?? MiB of RAM after teardown: module global `weights._CACHE` "
                 "(dict, 1 bytes object of 128 MiB)",
                 "test_b_clean.py keeps nothing after teardown (less than 16 MiB)",
                 "test_c_session.py keeps ?? MiB of RAM after teardown: fixture `corpus` "
                 "(session scope, still set up, 1 bytearray of 96 MiB)"):
        result.stdout.fnmatch_lines([line])  # one by one: pytest-randomly, where installed, shuffles modules
    assert "heavy modules (pytest-heavy)" not in result.stdout.str()  # nothing was isolated
    doc = json.loads((heavy_pytester.path / "heavy.json").read_text())
    rows = {row["module"]: row for row in doc["leaks"]}
    assert set(rows) == {"test_a_leaky.py", "test_b_clean.py", "test_c_session.py"}  # heavy or keeping
    assert 120 <= rows["test_a_leaky.py"]["kept_rss_mib"] <= 160 and rows["test_a_leaky.py"]["complete"]
    assert rows["test_a_leaky.py"]["holders"] == [{"holder": "module global `weights._CACHE`", "what": "dict",
                                                   "objects": 1, "mib": 128.0, "kinds": {"bytes object": 1},
                                                   "devices": ["cpu"]}]
    assert rows["test_b_clean.py"]["holders"] == [] and rows["test_b_clean.py"]["kept_rss_mib"] < 16
    assert {t["process"] for t in doc["tests"]} == {"parent"}


@pytest.mark.slow
def test_leak_finder_names_a_tensor_global(heavy_pytester):
    pytest.importorskip("torch")
    heavy_pytester.makepyfile(test_tensor="""
import pytest, torch
pytestmark = pytest.mark.requires_heavy_ram
_WEIGHTS = {}

def test_loads():
    _WEIGHTS["w"] = torch.ones(32 << 20)       # 128 MiB of float32
    _WEIGHTS["view"] = _WEIGHTS["w"][:1024]    # a view shares the storage: counted once
""")
    result = heavy_pytester.runpytest_subprocess("--heavy-find-leaks", *NO_SHUFFLE)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test_tensor.py keeps 1?? MiB of RAM after teardown: module global "
                                 "`test_tensor._WEIGHTS` (dict, 1 tensor of 128 MiB)"])


def test_leak_finder_says_when_its_search_was_cut_short(heavy_pytester):
    heavy_pytester.makeconftest("import pytest_heavy.memattr.leaks as leaks\nleaks.SEARCH_S = 0\n")
    heavy_pytester.makepyfile(test_keep="""
_KEEP = []
def test_keeps(): _KEEP.append(b"\\x01" * (64 << 20))
""")
    result = heavy_pytester.runpytest_subprocess("--heavy-find-leaks", *NO_SHUFFLE)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["test_keep.py keeps ?? MiB of RAM after teardown: * (search stopped after "
                                 "0s: holders may be missing)"])


def test_measuring_in_the_parent_keeps_fork_safe(heavy_pytester):
    """The parent's own monitor thread is one of ours: children still fork after parent tests ran."""
    heavy_pytester.makepyfile(test_a_light="def test_light(): pass\n", test_b_heavy=KNOWN_SIZES,
                              test_c_heavy=KNOWN_SIZES)
    plain = heavy_pytester.runpytest_subprocess(*NO_SHUFFLE)
    result = heavy_pytester.runpytest_subprocess("--heavy-report=heavy.json", *NO_SHUFFLE)
    result.assert_outcomes(passed=7)

    def started(run: pytest.RunResult) -> list[str]:  # the heavy table's start column
        heavy = ("test_b_heavy.py", "test_c_heavy.py")
        rows = [line.split() for line in run.outlines if line.startswith(heavy) and " exit " in line]
        return [row[5] for row in rows]  # module, tests, "3 passed", wall, start

    # as without measuring: fork, unless something else made the parent unsafe to fork (rerunfailures'
    # server thread when xdist is installed)
    assert started(result) == started(plain) and len(started(plain)) == 2
    assert "fork is unsafe" not in result.stdout.str() or "fork is unsafe" in plain.stdout.str()
    doc = json.loads((heavy_pytester.path / "heavy.json").read_text())
    assert [(t["module"], t["process"]) for t in doc["tests"]][:2] == [("test_a_light.py", "parent"),
                                                                       ("test_b_heavy.py", "child")]


def test_tree_rss_through_proc_matches_psutil_and_counts_children():
    """The sampler's /proc walk (children files, statm) and psutil's tree see the same processes. Both
    walk a tree this test owns (a child holding a grandchild that holds 96 MiB): this process's own
    children also include whatever an earlier in-process session left exiting, which may go between
    the two walks."""
    grandchild = ("import time; b = b'x' * (96 << 20); print('ready', flush=True); time.sleep(30)")
    holder = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {grandchild!r}])"
    child = subprocess.Popen([sys.executable, "-c", holder], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == b"ready"
        fast, fast_pids = sampler._tree_rss_proc(child.pid)
        slow, slow_pids = sampler._tree_rss_psutil(child.pid)
        assert len(fast_pids) == 2 and child.pid in fast_pids and fast_pids == slow_pids
        assert abs(fast - slow) < (8 << 20) and fast >= 96 << 20
        assert child.pid in sampler._tree_rss_proc(os.getpid())[1]
    finally:
        for pid in sampler._tree_rss_proc(child.pid)[1] - {child.pid}:
            os.kill(pid, 9)
        child.kill()
        child.wait()
        child.stdout.close()


def test_leak_finder_counts_gpu_memory_a_module_keeps(fake_gpu):
    """A context left behind (no Python object holds it) is kept GPU memory without a named holder."""
    fake_gpu.makepyfile(test_ctx="""
import os, pynvml, pytest
pytestmark = pytest.mark.requires_heavy_ram
def test_context(): pynvml.fake_create_context(os.getpid(), 0, used_mib=1024)
""", test_clean="import pytest\npytestmark = pytest.mark.requires_heavy_ram\ndef test_nothing(): pass\n")
    result = fake_gpu.runpytest_subprocess("-p", "pynvml", "--heavy-find-leaks", "--heavy-report=heavy.json",
                                           *NO_SHUFFLE)
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["test_clean.py keeps nothing after teardown (less than 16 MiB)"])
    result.stdout.fnmatch_lines(["test_ctx.py keeps 1.0 GiB of GPU memory after teardown: no large object "
                                 "found holding it (many small objects, or memory outside Python objects)"])
    rows = {r["module"]: r for r in json.loads((fake_gpu.path / "heavy.json").read_text())["leaks"]}
    assert rows["test_ctx.py"]["kept_gpu_mib"] == 1024.0 and rows["test_clean.py"]["kept_gpu_mib"] == 0.0


def test_parent_figures_leave_out_the_template_but_count_what_the_test_starts(heavy_pytester):
    """In the pytest process, sessions pytest-heavy started before the test (the template, which here
    preloads 192 MiB) are not the test's; an example's process, started by the test, is."""
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_preload = big_import\n"
                           "heavy_examples_dirs = examples\n")
    heavy_pytester.syspathinsert()
    heavy_pytester.makepyfile(big_import='BLOB = b"\\x01" * (192 << 20)\n')
    heavy_pytester.makepyfile(test_a_light="def test_light(): pass\n", test_b_heavy=KNOWN_SIZES,
                              test_c_heavy=KNOWN_SIZES)
    (heavy_pytester.path / "examples").mkdir()
    (heavy_pytester.path / "examples" / "hold.py").write_text(
        "# pytest:\nimport time\nblock = b'\\x01' * (160 << 20)\ntime.sleep(1.0)\n")
    result = heavy_pytester.runpytest_subprocess("--heavy-report=heavy.json", "--heavy-start=template",
                                                 *NO_SHUFFLE)
    result.assert_outcomes(passed=8)
    result.stdout.fnmatch_lines(["test_b_heavy.py *template*"])
    tests = {t["nodeid"]: t for t in json.loads((heavy_pytester.path / "heavy.json").read_text())["tests"]}
    light = tests["test_a_light.py::test_light"]
    assert light["process"] == "parent" and light["rss_mib"]["peak"] < 150  # the server's 192 MiB left out
    example = tests["examples/hold.py::example"]
    assert example["rss_mib"]["peak"] - light["rss_mib"]["peak"] >= 150  # the example's own 160 MiB
