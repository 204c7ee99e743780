"""The controller's decisions, without processes: a scripted launcher (``test/fakes/scripted_launcher.py``)
stands in for the children through the ``pytest_heavy_make_launcher`` hook, so restart after a crash,
``-x``, tests a child did not collect and a child that dies before its first test are checked exactly
and fast. The same paths run with real children in test_isolation.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

FAKES = Path(__file__).resolve().parent / "fakes"
HEAVY = "import pytest\npytestmark = pytest.mark.requires_heavy_ram\n\n"


@pytest.fixture
def scripted(heavy_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.syspath_prepend(str(FAKES))
    monkeypatch.setenv("SCRIPTED_LAUNCHER_LOG", str(heavy_pytester.path / "requests.jsonl"))
    heavy_pytester.makeconftest("pytest_plugins = ['scripted_launcher']\n")
    return heavy_pytester


def requests(pytester: pytest.Pytester) -> list[list[str]]:
    path = pytester.path / "requests.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def heavy_table_row(stdout: str, module: str) -> str:
    return next(line for line in stdout.splitlines() if line.startswith(module + "  "))  # the padded table


def test_crash_fails_that_test_and_a_fresh_child_runs_the_rest(scripted):
    scripted.makepyfile(test_a=HEAVY + "def test_one(): pass\ndef test_crash(): pass\n"
                                       "def test_three(): pass\n",
                        test_b=HEAVY + "def test_b(): pass\n")
    result = scripted.runpytest("-rA")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines(["_*_ test_crash _*_",
                                 "child process for test_a.py died with SIGSEGV during test_a.py::test_crash",
                                 "last lines of its stderr:", "Fatal Python error: Segmentation fault"])
    assert requests(scripted) == [["test_a.py::test_one", "test_a.py::test_crash", "test_a.py::test_three"],
                                  ["test_a.py::test_three"], ["test_b.py::test_b"]]
    row = heavy_table_row(result.stdout.str(), "test_a.py")
    assert "SIGSEGV, exit 0" in row
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_a_child_that_dies_in_setup_errors_that_test_only_and_the_row_counts_both_children(scripted):
    """The dead child's result (its status, and the test it died in) reaches the report and the heavy
    table's row once: the setup fails with the crash, pytest never calls the test, teardown passes."""
    scripted.makepyfile(test_a=HEAVY + "def test_setup_crash(): pass\ndef test_two(): pass\n",
                        test_b=HEAVY + "def test_b(): pass\n")
    result = scripted.runpytest("-rA", "--junitxml", "junit.xml", "--heavy-report", "heavy.json")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["_*_ ERROR at setup of test_setup_crash _*_",
                                 "child process for test_a.py died with SIGSEGV during "
                                 "test_a.py::test_setup_crash"])
    assert requests(scripted)[:2] == [["test_a.py::test_setup_crash", "test_a.py::test_two"],
                                      ["test_a.py::test_two"]]
    junit = (scripted.path / "junit.xml").read_text()
    assert junit.count('name="test_setup_crash"') == 1 and junit.count("<error ") == 1
    row = rows(scripted)["test_a.py"]
    assert (row["exit"], row["restarts"], row["tests"]) == ("SIGSEGV, exit 0", 1, 2)
    assert row["outcomes"] == {"error": 1, "passed": 1}


def test_a_child_that_dies_before_any_test_is_not_restarted(scripted):
    scripted.makepyfile(test_a=HEAVY + "def test_early(): pass\ndef test_two(): pass\n",
                        test_b=HEAVY + "def test_b(): pass\n")
    result = scripted.runpytest("-rA")
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(["*test_a.py::test_two was not run: the child process "
                                 "for test_a.py ended (SIGSEGV) before reaching it"])
    assert requests(scripted)[0] == ["test_a.py::test_early", "test_a.py::test_two"]
    assert len(requests(scripted)) == 2  # test_a once (no progress: no restart), test_b once


def test_exitfirst_stops_the_session_and_starts_no_further_child(scripted):
    scripted.makepyfile(test_a=HEAVY + "def test_fail(): pass\ndef test_two(): pass\n",
                        test_b=HEAVY + "def test_b(): pass\n")
    result = scripted.runpytest("-x")
    result.assert_outcomes(failed=1)
    assert requests(scripted) == [["test_a.py::test_fail", "test_a.py::test_two"]]
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_maxfail_counts_failures_across_children(scripted):
    scripted.makepyfile(test_a=HEAVY + "def test_fail_a(): pass\ndef test_a2(): pass\n",
                        test_b=HEAVY + "def test_fail_b(): pass\ndef test_b2(): pass\n",
                        test_c=HEAVY + "def test_c(): pass\n")
    result = scripted.runpytest("--maxfail", "2")
    result.assert_outcomes(passed=1, failed=2)
    assert [len(r) for r in requests(scripted)] == [2, 2]  # test_c's child never starts


def test_a_test_the_child_did_not_collect_fails_with_the_reason(scripted):
    scripted.makepyfile(test_a=HEAVY + "def test_missing(): pass\ndef test_two(): pass\n",
                        test_b=HEAVY + "def test_b(): pass\n")
    result = scripted.runpytest("-rA")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*test_a.py::test_missing was not collected in the child process for "
                                 "test_a.py (collection differs between the parent and the child)*"])


# --- --heavy-workers auto: the packing scheduler's decisions as the controller carries them out --------

GPU_MODULE = "import pytest\npytestmark = [pytest.mark.requires_gpu, pytest.mark.requires_gpu_isolation]\n\n"


def placements(pytester: pytest.Pytester) -> list[tuple[str, str | None]]:
    path = pytester.path / "requests.jsonl.placements"
    return [(p["unit"], p["cuda"]) for p in map(json.loads, path.read_text().splitlines())]


def record_peaks(pytester: pytest.Pytester, **modules: tuple[float, float]) -> None:
    """Committed peaks, {module stem: (wall s, GPU MiB)}, where heavy_durations_path's file names them."""
    pytester.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_durations_path = durations.json\n")
    peaks = {f"{m}.py": {"wall_s": w, "rss_mib": 100, "gpu_mib": [g]} for m, (w, g) in modules.items()}
    (pytester.path / "durations.json.peaks.json").write_text(json.dumps(peaks))


def gpu_modules(pytester: pytest.Pytester, names: str) -> None:
    """test_a.py, test_b.py, ... for names "ab...": one passing test each, GPU-marked and isolated."""
    for name in names:
        pytester.makepyfile(**{f"test_{name}": GPU_MODULE + f"def test_{name}(): pass\n"})


def rows(pytester: pytest.Pytester) -> dict[str, dict]:
    return {r["unit"]: r for r in json.loads((pytester.path / "heavy.json").read_text())["modules"]}


def test_auto_pins_one_child_per_exclusive_gpu_longest_recorded_first(scripted):
    record_peaks(scripted, test_a=(1, 1000), test_b=(30, 1000), test_c=(10, 1000))
    gpu_modules(scripted, "abc")
    result = scripted.runpytest("--heavy-workers", "auto", "--heavy-report", "heavy.json",
                                "--heavy-assume", "gpus=2x80GiB,compute_mode=exclusive_process,mps=off")
    result.assert_outcomes(passed=3)
    started = placements(scripted)
    assert started[:2] == [("test_b.py", "GPU-assumed-0"), ("test_c.py", "GPU-assumed-1")]
    assert started[2][0] == "test_a.py"
    assert all(r["beside"] == [] and len(r["gpus"]) == 1 for r in rows(scripted).values())
    result.stdout.fnmatch_lines(["module * start * GPU * beside * peak RSS*",
                                 "heavy schedule (--heavy-workers auto, 2 GPUs): 3 modules in *s wall; "
                                 "one at a time they took *s (*x)"])


def test_auto_shares_a_default_mode_gpu_when_the_recorded_peaks_fit(scripted):
    record_peaks(scripted, test_a=(5, 30_000), test_b=(5, 30_000), test_c=(5, 30_000))
    gpu_modules(scripted, "abc")
    result = scripted.runpytest("--heavy-workers", "auto", "--heavy-report", "heavy.json",
                                "--heavy-assume", "gpus=1x80GiB")
    result.assert_outcomes(passed=3)
    assert placements(scripted)[:2] == [("test_a.py", "GPU-assumed-0"), ("test_b.py", "GPU-assumed-0")]
    got = rows(scripted)
    assert got["test_a.py"]["beside"][0] == "test_b.py" and got["test_b.py"]["beside"][0] == "test_a.py"
    assert got["test_a.py"]["gpus"] == [0]
    result.stdout.fnmatch_lines(["test_a.py  *  0    1*"])  # GPU 0, with one (or more) beside it


def test_modules_without_recorded_peaks_run_alone_on_their_gpu(scripted):
    gpu_modules(scripted, "ab")
    result = scripted.runpytest("--heavy-workers", "auto", "--heavy-report", "heavy.json",
                                "--heavy-assume", "gpus=1x80GiB")
    result.assert_outcomes(passed=2)
    assert all(r["beside"] == [] for r in rows(scripted).values())


def test_count_workers_pin_nothing(scripted):
    gpu_modules(scripted, "ab")
    result = scripted.runpytest("--heavy-workers", "2", "--heavy-assume", "gpus=2x80GiB")
    result.assert_outcomes(passed=2)
    assert placements(scripted) == [("test_a.py", None), ("test_b.py", None)]
    assert "heavy schedule" not in result.stdout.str() and " beside " not in result.stdout.str()


def test_an_oom_while_sharing_a_gpu_is_run_once_more_alone(scripted):
    record_peaks(scripted, test_a=(5, 10_000), test_b=(1, 10_000))
    scripted.makepyfile(test_a=GPU_MODULE + "def test_oom_once(): pass\ndef test_after(): pass\n",
                        test_b=GPU_MODULE + "def test_b(): pass\n")
    result = scripted.runpytest("-rA", "--heavy-workers", "auto", "--heavy-assume", "gpus=1x80GiB",
                                "--junitxml", "junit.xml")
    result.assert_outcomes(passed=3)
    first = ["test_a.py::test_oom_once", "test_a.py::test_after"]
    assert requests(scripted) == [first, ["test_b.py::test_b"], ["test_a.py::test_oom_once"]]
    assert placements(scripted)[2] == ("test_a.py", "GPU-assumed-0")
    result.stdout.fnmatch_lines(["test_a.py *2 passed*(retried alone after OOM while sharing GPU 0)"])
    assert result.stdout.str().count("PASSED test_a.py::test_oom_once") == 1
    assert (scripted.path / "junit.xml").read_text().count('name="test_oom_once"') == 1


def test_an_oom_alone_is_a_failure(scripted):
    record_peaks(scripted, test_a=(5, 10_000), test_b=(1, 10_000))
    scripted.makepyfile(test_a=GPU_MODULE + "def test_oom_always(): pass\n",
                        test_b=GPU_MODULE + "def test_b(): pass\n")
    result = scripted.runpytest("--heavy-workers", "auto", "--heavy-assume", "gpus=1x80GiB")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*CUDA out of memory*", "test_a.py *1 failed*(retried alone after OOM*"])
    assert requests(scripted).count(["test_a.py::test_oom_always"]) == 2
    # in EXCLUSIVE_PROCESS nothing shares a GPU: an OOM there fails at once
    (scripted.path / "requests.jsonl").unlink()
    result = scripted.runpytest("--heavy-workers", "auto",
                                "--heavy-assume", "gpus=1x80GiB,compute_mode=exclusive_process")
    result.assert_outcomes(passed=1, failed=1)
    assert requests(scripted).count(["test_a.py::test_oom_always"]) == 1


def test_a_module_that_needs_two_gpus_is_pinned_to_two(scripted):
    record_peaks(scripted, test_pair=(9, 1000), test_one=(1, 1000))
    scripted.makepyfile(test_pair="import pytest\npytestmark = pytest.mark.requires_gpu_isolation\n"
                                  "@pytest.mark.requires_gpu(count=2)\ndef test_pair(): pass\n",
                        test_one=GPU_MODULE + "def test_one(): pass\n")
    result = scripted.runpytest("--heavy-workers", "auto", "--heavy-report", "heavy.json",
                                "--heavy-assume", "gpus=2x80GiB,compute_mode=exclusive_process,mps=off")
    result.assert_outcomes(passed=2)
    assert placements(scripted) == [("test_pair.py", "GPU-assumed-0,GPU-assumed-1"),
                                    ("test_one.py", "GPU-assumed-0")]  # after test_pair freed both
    assert rows(scripted)["test_pair.py"]["gpus"] == [0, 1]
