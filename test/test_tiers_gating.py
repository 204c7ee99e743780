"""Tiers, gating and overrides, each proved by a real pytest session."""

import gc
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TORCH_DOUBLE = Path(__file__).resolve().parent / "fakes" / "torch_double"

SUITE = """
import pytest

def test_fast(): pass

@pytest.mark.slow
def test_slow(): pass

@pytest.mark.qualitative
def test_qualitative(): pass

@pytest.mark.requires_gpu
def test_gpu(): pass

@pytest.mark.huggingface
def test_hf(): pass

@pytest.mark.requires_vram(24)
def test_vram(): pass

@pytest.mark.requires_heavy_ram
def test_ram(): pass

@pytest.mark.vllm
def test_vllm(): pass
"""


@pytest.fixture
def suite(heavy_pytester):
    heavy_pytester.makepyfile(test_suite=SUITE)
    return heavy_pytester


def outcomes(result):
    """{test name: outcome} from -rA short summary lines."""
    got = {}
    for line in result.outlines:
        for word in ("PASSED", "SKIPPED", "FAILED", "ERROR"):
            if line.startswith(word + " "):
                name = line.split("::")[-1].split(" ")[0] if "::" in line else line
                got[name] = word
    return got


def test_default_tier_deselects_slow_and_gates_hardware(suite):
    result = suite.runpytest("-rA", "--strict-markers")
    result.assert_outcomes(passed=3, skipped=4, deselected=1)
    result.stdout.fnmatch_lines([
        "*SKIPPED*test_suite.py:*: needs a GPU (requires_gpu): --heavy-assume gpus=0*",
        "*SKIPPED*needs a GPU (huggingface): --heavy-assume gpus=0*",
        "*SKIPPED*needs a GPU (requires_vram): --heavy-assume gpus=0*",
        "*SKIPPED*needs a GPU (vllm)*",
    ])
    assert "needs 4 GiB RAM" not in result.stdout.str()  # 16 GiB assumed >= heavy_ram_gib 4


def test_fast_tier_and_slow_tier(suite):
    suite.runpytest("-m", "not qualitative").assert_outcomes(passed=2, skipped=4, deselected=2)
    suite.runpytest("-m", "slow").assert_outcomes(passed=1, deselected=7)
    suite.runpytest("--heavy-run-slow").assert_outcomes(passed=4, skipped=4)


def test_slow_default_can_be_turned_off(suite):
    suite.makeini("[pytest]\nheavy_skip_slow_by_default = false\nheavy_ram_gib = 4\n")
    suite.runpytest().assert_outcomes(passed=4, skipped=4)


def test_cicd_skips_qualitative_with_reason(suite, monkeypatch):
    monkeypatch.setenv("CICD", "1")
    result = suite.runpytest("-rs", "--heavy-isolate", "never")
    result.assert_outcomes(passed=2, skipped=5, deselected=1)
    result.stdout.fnmatch_lines(["*SKIPPED*CICD=1: qualitative tests are skipped in CI*"])


def test_ram_gate_names_both_numbers(suite, monkeypatch):
    monkeypatch.setenv("PYTEST_HEAVY_ASSUME", "gpus=0,ram=2GiB")
    result = suite.runpytest("-rs")
    result.stdout.fnmatch_lines(["*needs 4 GiB RAM (requires_heavy_ram, heavy_ram_gib): "
                                 "this machine has 2.0 GiB*"])
    suite.runpytest("-rs", "--heavy-ignore-ram-check").assert_outcomes(passed=3, skipped=4, deselected=1)


def test_vram_gate_and_gpu_override(suite):
    result = suite.runpytest("-rs", "--heavy-assume", "gpus=1x16GiB,ram=64GiB")
    result.stdout.fnmatch_lines([
        "*needs a GPU with 24 GiB (requires_vram): largest visible GPU has 16.0 GiB (assumed GPU)*",
        "*needs vllm (vllm marker): the vllm package is not installed*",
    ])
    result.assert_outcomes(passed=5, skipped=2, deselected=1)
    result = suite.runpytest("--heavy-assume", "gpus=2x80GiB,ram=64GiB")
    result.assert_outcomes(passed=6, skipped=1, deselected=1)


def test_ignore_gpu_check_runs_gpu_tests(suite):
    suite.runpytest("--heavy-ignore-gpu-check").assert_outcomes(passed=6, skipped=1, deselected=1)
    suite.runpytest("--heavy-skip-resource-checks").assert_outcomes(passed=6, skipped=1, deselected=1)


def test_extra_gpu_marker_from_ini(heavy_pytester):
    heavy_pytester.makeini("[pytest]\nheavy_gpu_markers = requires_gpu my_cuda\n")
    heavy_pytester.makepyfile("import pytest\n@pytest.mark.my_cuda\ndef test_x(): pass\n")
    result = heavy_pytester.runpytest("-rs", "--strict-markers")
    result.stdout.fnmatch_lines(["*needs a GPU (my_cuda)*"])


def test_gated_summary_groups_reasons(suite):
    result = suite.runpytest("-rs")
    result.stdout.fnmatch_lines(["*gated tests (pytest-heavy)*", "4 need a GPU (--heavy-assume gpus=0)"])
    result = suite.runpytest()
    result.stdout.fnmatch_lines(["pytest-heavy: 4 gated: 4 need a GPU (--heavy-assume gpus=0) "
                                 "(-rs for details)"])


def test_header_shows_hardware_and_tier(suite):
    result = suite.runpytest("--heavy-assume", "gpus=1x80GiB,compute_mode=exclusive_process,mps=off")
    result.stdout.fnmatch_lines([
        "heavy: 1x assumed GPU 80GiB (exclusive_process); MPS off; RAM *GiB; * CPUs "
        "[[]assumed: gpus,compute_mode,mps[]]",
        "heavy tier: default tier; slow: deselected",
    ])


@pytest.mark.parametrize("spec, field", [
    ("gpus=2xbig", "gpus"), ("ram=lots", "ram"), ("compute_mode=turbo", "compute_mode"),
    ("mps=maybe", "mps"), ("colour=red", "colour"), ("gpus", "FIELD=VALUE"),
])
def test_bad_assume_is_a_usage_error_naming_the_field(heavy_pytester, spec, field):
    result = heavy_pytester.runpytest("--heavy-assume", spec)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--heavy-assume*{field}*"])


@pytest.mark.parametrize("ini, key", [
    ("heavy_isolate = sometimes", "heavy_isolate"), ("heavy_ram_gib = lots", "heavy_ram_gib"),
    ("heavy_start = teleport", "heavy_start"), ("heavy_env = NOEQUALS", "heavy_env"),
    ("heavy_cleanup = maybe", "heavy_cleanup"),
])
def test_bad_ini_value_is_a_usage_error_naming_the_key(heavy_pytester, ini, key):
    heavy_pytester.makeini(f"[pytest]\n{ini}\n")
    heavy_pytester.makepyfile("def test_x(): pass\n")
    result = heavy_pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{key}*"])


def test_bad_requires_vram_argument_names_the_test(heavy_pytester):
    heavy_pytester.makepyfile("import pytest\n@pytest.mark.requires_vram('a lot')\ndef test_x(): pass\n")
    result = heavy_pytester.runpytest("--heavy-assume", "gpus=1x8GiB")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_bad_requires_vram_argument_names_the_test.py::test_x: "
                                 "requires_vram expects*"])


def test_parent_never_imports_torch(heavy_pytester):
    heavy_pytester.makeconftest("""
import sys
def pytest_sessionfinish(session):
    print("TORCH-IN-PARENT", "torch" in sys.modules, "pynvml" in sys.modules)
""")
    heavy_pytester.makepyfile("import pytest\n@pytest.mark.requires_gpu\ndef test_x(): pass\n"
                              "def test_y(): pass\n")
    result = heavy_pytester.runpytest_subprocess("-s", "--heavy-assume", "ram=16GiB")
    result.stdout.fnmatch_lines(["*TORCH-IN-PARENT False*"])


CLEANUP_SUITE = """
import gc, pytest
heavy = pytest.mark.requires_heavy_ram

class Cycle:
    def __init__(self, size):
        self.me = self
        self.buffer = bytearray(size)

def cycles():
    return [o for o in gc.get_objects() if type(o).__name__ == "Cycle"]

@pytest.fixture(scope="module", autouse=True)
def explicit_gc_only():
    gc.disable()  # only an explicit gc.collect() (the cleanup's) may free a cycle
    yield
    gc.enable()

def test_plain_garbage():
    Cycle(1)

def test_plain_garbage_is_left_to_reference_counting():
    assert len(cycles()) == 1  # no collection after an ordinary test: it costs 80-400 ms on a big heap
    gc.collect()

@heavy
def test_heavy_leaves_a_large_buffer_in_a_cycle():
    Cycle(256 << 20)

@heavy
def test_next_heavy_test_finds_it_freed():
    assert not cycles()
"""


def test_ci_cleanup_collects_after_heavy_tests_only(heavy_pytester, monkeypatch):
    monkeypatch.setenv("CICD", "1")
    heavy_pytester.makepyfile(test_cleanup=CLEANUP_SUITE)
    heavy_pytester.runpytest("-p", "no:randomly", "--heavy-isolate", "never").assert_outcomes(passed=4)
    heavy_pytester.makeini("[pytest]\nheavy_cleanup = never\nheavy_ram_gib = 4\n")
    result = heavy_pytester.runpytest("-p", "no:randomly", "--heavy-isolate", "never")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["*test_next_heavy_test_finds_it_freed*"])


def test_cleanup_empties_the_cuda_cache_only_once_cuda_is_initialized(heavy_pytester, monkeypatch):
    monkeypatch.setenv("CICD", "1")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(TORCH_DOUBLE),
                                                                   os.environ.get("PYTHONPATH")])))
    heavy_pytester.makepyfile(test_cuda="""
import pytest, torch
heavy = pytest.mark.requires_heavy_ram

@heavy
def test_heavy_without_cuda(): pass

def test_no_empty_cache_yet():
    assert torch.cuda.empty_cache_calls == 0

def test_makes_a_context():
    torch.cuda.init()

def test_then_every_test_empties_it():
    assert torch.cuda.empty_cache_calls == 1
""")
    result = heavy_pytester.runpytest_subprocess("-p", "no:randomly", "--heavy-isolate", "never")
    result.assert_outcomes(passed=4)


FREEZE_SUITE = """
import gc

def test_records_the_freeze():
    with open("frozen.txt", "w") as out:
        out.write(str(gc.get_freeze_count()))
"""


def frozen_in_test(pytester, *args, inline=False):
    """How many objects ``gc.freeze()`` had moved out of the collector's way when the test ran."""
    pytester.makepyfile(test_freeze=FREEZE_SUITE)
    run = pytester.runpytest_inprocess if inline else pytester.runpytest_subprocess
    run(*args).assert_outcomes(passed=1)
    return int((pytester.path / "frozen.txt").read_text())


def test_an_opted_in_session_freezes_the_heap_after_collection(heavy_pytester):
    """Full collections (a plugin's, pytest's own at unconfigure, the interpreter's at exit) then
    skip the libraries and items that live for the whole session."""
    assert frozen_in_test(heavy_pytester) > 10_000


def test_no_freeze_where_it_would_hide_objects_or_reach_another_session(heavy_pytester):
    """--heavy-find-leaks walks the collector's objects; a session nested in another (pytester's
    inline runs) must not change its host process; a project that did not opt in sees nothing."""
    assert frozen_in_test(heavy_pytester, "--heavy-find-leaks") == 0
    before = gc.get_freeze_count()  # this suite's own session may have frozen; frozen objects still die
    assert frozen_in_test(heavy_pytester, inline=True) <= before
    assert gc.get_freeze_count() <= before
    heavy_pytester.makeini("[pytest]\n")
    assert frozen_in_test(heavy_pytester) == 0


def test_doctor_json(tmp_path):
    run = subprocess.run([sys.executable, "-m", "pytest_heavy.cli", "doctor", "--json", "--heavy-assume",
                          "gpus=1x80GiB,compute_mode=exclusive_process,mps=off,ram=64GiB"],
                         capture_output=True, text=True, cwd=tmp_path, check=True)
    doc = json.loads(run.stdout)
    assert doc["parent_trap_risk"] is True
    assert doc["hardware"]["gpus"][0]["total_mib"] == 80 * 1024
    assert doc["markers"]["requires_gpu"]["runs"] is True
    assert doc["markers"]["requires_heavy_ram"]["runs"] is True
    assert doc["markers"]["slow"]["runs"] is False
    plain = subprocess.run([sys.executable, "-m", "pytest_heavy.cli", "doctor", "--json"],
                           capture_output=True, text=True, cwd=tmp_path, check=True)
    assert "markers" in json.loads(plain.stdout)
    text = subprocess.run([sys.executable, "-m", "pytest_heavy.cli", "doctor", "--heavy-assume",
                           "gpus=1x80GiB,compute_mode=exclusive_process,mps=off"],
                          capture_output=True, text=True, cwd=tmp_path, check=True)
    assert "PARENT TRAP RISK" in text.stdout


def test_doctor_into_a_closed_pipe_ends_quietly(tmp_path):
    """`pytest-heavy doctor | head -1`: the reader left before doctor wrote; no traceback, exit 0."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        run = subprocess.run([sys.executable, "-m", "pytest_heavy.cli", "doctor"], stdout=write_end,
                             stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    finally:
        os.close(write_end)
    assert "Traceback" not in run.stderr and run.returncode == 0, run.stderr


def test_closest_marks_match_pytest_at_every_level(heavy_pytester: pytest.Pytester) -> None:
    """markers.closest (one walk per node, shared by tiers, gating, planning and limits) answers what
    pytest's own iter_markers does: the item's mark before its class's and module's, stacked decorators
    included, and a mark added later to the item (gating's skip) or to its class is seen."""
    heavy_pytester.makepyfile('''
        import pytest
        from pytest_heavy import markers

        pytestmark = [pytest.mark.slow, pytest.mark.foo(1)]

        def pytest_closest(item):
            expected = {}
            for mark in item.iter_markers():
                expected.setdefault(mark.name, mark)
            assert markers.closest(item) == expected
            return expected

        @pytest.mark.foo(2)
        class TestLevels:
            @pytest.mark.foo(3)
            @pytest.mark.foo(4)
            def test_own(self, request):
                assert pytest_closest(request.node)["foo"].args == (4,)
                request.node.add_marker(pytest.mark.bar)
                assert "bar" in pytest_closest(request.node)

            def test_class(self, request):
                assert pytest_closest(request.node)["foo"].args == (2,)
                request.node.parent.add_marker(pytest.mark.baz)  # on the class, after the item's answer
                assert "baz" in pytest_closest(request.node)

        def test_module(request):
            assert pytest_closest(request.node)["foo"].args == (1,)
            assert "slow" in pytest_closest(request.node)
    ''')
    heavy_pytester.runpytest("--heavy-run-slow").assert_outcomes(passed=3)


def test_closest_marks_are_built_once_per_node(heavy_pytester: pytest.Pytester) -> None:
    """Asked again with no mark added since, every node answers from its stash: the same object."""
    items = heavy_pytester.getitems("""
        import pytest

        pytestmark = pytest.mark.slow

        class TestGroup:
            def test_plain(self):
                pass

            @pytest.mark.parametrize("n", [1])
            def test_marked(self, n):
                pass
    """)
    from pytest_heavy import markers

    for item in items:
        assert markers.closest_mark(item, "slow") is item.get_closest_marker("slow")  # builds no answer
        assert markers.closest_mark(item, "parametrize") is item.get_closest_marker("parametrize")
        first = markers.closest(item)
        assert markers.closest(item) is first and "slow" in first
        item.add_marker(pytest.mark.skip(reason="gated"))  # as gating adds its skips
        assert "skip" in markers.closest(item) and markers.closest(item) is not first
