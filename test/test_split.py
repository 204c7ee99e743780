"""--heavy-split and `pytest-heavy split`, each proved by real pytest sessions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_heavy import cli
from pytest_heavy.cli.merge import worst
from pytest_heavy.split.durations import SNAPSHOT_ENV

ROOT = Path(__file__).resolve().parent.parent

INI = "[pytest]\nheavy_ram_gib = 4\nheavy_durations_path = ci/durations.json\n"


def write_durations(pytester: pytest.Pytester, durations: dict[str, float]) -> None:
    path = pytester.path / "ci" / "durations.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(durations))


def collected(pytester: pytest.Pytester, *args: str) -> list[str]:
    """The node ids a session would run, in its order (a `--collect-only -q` session)."""
    result = pytester.runpytest("--collect-only", "-q", *args)
    assert result.ret in (0, 5), result.stdout.str()
    return [line for line in result.outlines if "::" in line and " " not in line]


def subsets(pytester: pytest.Pytester, n: int, *args: str) -> list[list[str]]:
    return [collected(pytester, f"--heavy-split={i}/{n}", *args) for i in range(1, n + 1)]


@pytest.fixture
def split_pytester(heavy_pytester: pytest.Pytester) -> pytest.Pytester:
    heavy_pytester.makeini(INI)
    return heavy_pytester


def test_records_setup_call_teardown_in_cache_and_committed_file(split_pytester):
    """The cache records every run; the committed file changes only with --heavy-store-durations."""
    write_durations(split_pytester, {"test_gone.py::test_old": 3.0})
    split_pytester.makepyfile(test_rec="""
        import time
        import pytest

        @pytest.fixture
        def slow_fixture():
            time.sleep(0.1)
            yield
            time.sleep(0.1)

        def test_timed(slow_fixture):
            time.sleep(0.1)

        def test_fails():
            assert 0

        def test_skipped():
            pytest.skip("a skip's time says nothing")

        @pytest.mark.xfail
        def test_xfail():
            assert 0
    """)
    committed = split_pytester.path / "ci/durations.json"
    before = committed.read_text()
    split_pytester.runpytest().assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1)
    split_pytester.runpytest("--heavy-split=1/1").assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1)
    assert committed.read_text() == before  # ordinary and split runs only read the committed file

    cached = json.loads((split_pytester.path / ".pytest_cache/v/heavy/durations").read_text())
    assert set(cached) == {"test_rec.py::test_timed", "test_rec.py::test_fails", "test_rec.py::test_xfail"}
    assert cached["test_rec.py::test_timed"] >= 0.29  # setup + call + teardown
    stored = split_pytester.runpytest("--heavy-store-durations")
    stored.assert_outcomes(passed=1, failed=1, skipped=1, xfailed=1)
    text = committed.read_text()
    stored = json.loads(text)
    assert set(stored) == {*cached, "test_gone.py::test_old"}  # merged with what was there
    assert stored["test_gone.py::test_old"] == 3.0 and stored["test_rec.py::test_timed"] >= 0.29
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("args", [[], ["-p", "no:terminal"]], ids=["stats", "no-terminal"])
def test_durations_come_from_the_terminal_reporter_or_without_it_from_each_report(split_pytester, args):
    """The terminal reporter keeps every report, read at the session's end; without it, our hook takes
    each one. Either way: setup + call + teardown, skips left out."""
    split_pytester.makepyfile(test_rec="""
        import time
        import pytest

        @pytest.fixture
        def fixture():
            time.sleep(0.05)
            yield
            time.sleep(0.05)

        def test_timed(fixture):
            time.sleep(0.05)

        def test_skipped():
            pytest.skip("a skip's time says nothing")
    """)
    assert split_pytester.runpytest(*args).ret == 0
    cached = json.loads((split_pytester.path / ".pytest_cache/v/heavy/durations").read_text())
    assert set(cached) == {"test_rec.py::test_timed"}
    assert cached["test_rec.py::test_timed"] >= 0.14


def test_cache_overrides_committed_file_and_unknown_items_count_as_the_mean(split_pytester):
    split_pytester.makepyfile(test_abc="""
        import pytest

        def test_a(): pass
        def test_b(): pass
        def test_c(): pass

        @pytest.mark.requires_gpu
        def test_gpu(): pass
    """)
    write_durations(split_pytester, {"test_abc.py::test_a": 10.0, "test_abc.py::test_b": 1.0,
                                     "test_abc.py::test_c": 1.0, "test_abc.py::test_gpu": 100.0})
    first, second = subsets(split_pytester, 2)
    assert first == ["test_abc.py::test_a"]
    assert second == ["test_abc.py::test_b", "test_abc.py::test_c", "test_abc.py::test_gpu"]

    cache = split_pytester.path / ".pytest_cache/v/heavy/durations"
    cache.parent.mkdir(parents=True, exist_ok=True)  # the split round is kept there already
    cache.write_text(json.dumps({"test_abc.py::test_a": 1.0, "test_abc.py::test_b": 10.0}))
    first, second = subsets(split_pytester, 2)
    assert first == ["test_abc.py::test_b"]

    # test_c unrecorded counts as the mean of a and b (5.5); test_gpu, gated here, as nothing.
    cache.write_text(json.dumps({"test_abc.py::test_a": 2.0, "test_abc.py::test_b": 9.0}))
    split_pytester.path.joinpath("ci/durations.json").unlink()
    result = split_pytester.runpytest("--collect-only", "-q", "--heavy-split=1/2")
    result.stdout.fnmatch_lines(["heavy split 1/2 by item: * of 4 items, about *s of 16.50s *"])


def suite_with_durations(pytester: pytest.Pytester) -> set[str]:
    """8 modules of 6 tests with spread-out recorded durations, 4 of them unrecorded; all node ids."""
    durations, nodeids = {}, set()
    for m in range(8):
        pytester.makepyfile(**{f"test_m{m}": "\n".join(f"def test_{t}(): pass" for t in range(6))})
        for t in range(6):
            nodeid = f"test_m{m}.py::test_{t}"
            nodeids.add(nodeid)
            if (m, t) not in ((0, 0), (3, 2), (5, 5), (7, 1)):
                durations[nodeid] = ((m * 6 + t) * 37 % 29 + 1) / 4
    write_durations(pytester, durations)
    return nodeids


def test_subsets_are_balanced_and_their_union_is_the_selection(split_pytester):
    everything = suite_with_durations(split_pytester)
    assert set(collected(split_pytester)) == everything
    parts = subsets(split_pytester, 4)
    flat = [nodeid for part in parts for nodeid in part]
    assert len(flat) == len(set(flat)) and set(flat) == everything

    durations = json.loads((split_pytester.path / "ci/durations.json").read_text())
    mean = sum(durations.values()) / len(durations)
    loads = [sum(durations.get(nodeid, mean) for nodeid in part) for part in parts]
    assert max(loads) <= 1.1 * min(loads), loads

    # Selection first, split second: -k narrows what is divided, and the union follows it.
    narrowed = {n for n in everything if n.startswith(("test_m1", "test_m2"))}
    parts = subsets(split_pytester, 3, "-k", "test_m1 or test_m2")
    assert sorted(n for part in parts for n in part) == sorted(narrowed)


def test_partition_does_not_depend_on_collection_order(split_pytester):
    everything = suite_with_durations(split_pytester)
    # Many equal weights: exactly where an order-dependent tie-break would show.
    write_durations(split_pytester, {n: float(1 + int(n[-1]) % 2) for n in sorted(everything)[::2]})
    before = subsets(split_pytester, 3)
    split_pytester.makeconftest("""
        import random

        def pytest_collection_modifyitems(items):
            random.Random(7).shuffle(items)
    """)
    after = subsets(split_pytester, 3)
    assert [set(p) for p in after] == [set(p) for p in before]
    assert [p for p in after] != [p for p in before]  # the order really changed


EXAMPLES_CONFTEST = """
    import pytest

    class Example(pytest.Item):
        def runtest(self):
            pass

    class ExampleFile(pytest.File):
        def collect(self):
            yield Example.from_parent(self, name="example")

    def pytest_collect_file(file_path, parent):
        if file_path.suffix == ".ex":
            return ExampleFile.from_parent(parent, path=file_path)
"""


def test_split_by_module_keeps_modules_and_example_directories_whole(split_pytester):
    split_pytester.makeini(INI + "heavy_examples_dirs = examples\n")
    split_pytester.makeconftest(EXAMPLES_CONFTEST)  # items under an examples dir, like examples.py's
    for name in ("safety/guard", "safety/filter", "vision/crop", "vision/resize", "top"):
        path = split_pytester.path / "examples" / f"{name}.ex"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    for m in range(3):
        split_pytester.makepyfile(**{f"test_mod{m}": "def test_1(): pass\ndef test_2(): pass\n"})

    def group(nodeid: str) -> str:
        path = nodeid.split("::")[0]
        return path.rpartition("/")[0] if path.startswith("examples/") else path

    by_item = subsets(split_pytester, 4)
    assert any(len({group(n) for n in part}) > 1 for part in by_item)  # items alone do split groups
    by_module = subsets(split_pytester, 4, "--heavy-split-by", "module")
    assert sorted(n for part in by_module for n in part) == sorted(n for part in by_item for n in part)
    owners: dict[str, int] = {}
    for index, part in enumerate(by_module):
        for nodeid in part:
            assert owners.setdefault(group(nodeid), index) == index, f"{group(nodeid)} split: {by_module}"
    assert {"examples/safety", "examples/vision", "examples", "test_mod0.py"} <= set(owners)


def test_empty_subset_exits_zero_with_a_line_saying_so(split_pytester):
    split_pytester.makepyfile(test_one="def test_one(): pass")
    result = split_pytester.runpytest("--heavy-split", "2/2")
    assert result.ret == pytest.ExitCode.OK
    result.assert_outcomes(deselected=1)
    result.stdout.fnmatch_lines(["heavy split 2/2: this subset is empty (all 1 selected items *"])
    split_pytester.runpytest("--heavy-split", "1/2").assert_outcomes(passed=1)
    # Nothing selected before the split is still "no tests ran".
    nothing = split_pytester.runpytest("--heavy-split", "1/2", "-k", "no_such_test")
    assert nothing.ret == pytest.ExitCode.NO_TESTS_COLLECTED


@pytest.mark.parametrize("bad", ["3/2", "0/2", "two/4", "2"])
def test_bad_split_is_a_usage_error(split_pytester, bad):
    split_pytester.makepyfile(test_one="def test_one(): pass")
    result = split_pytester.runpytest("--heavy-split", bad)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*--heavy-split '{bad}': expected i/N with 1 <= i <= N*"])


def test_snapshot_keeps_one_run_on_one_partition(split_pytester, monkeypatch):
    split_pytester.makepyfile(test_ab="def test_a(): pass\ndef test_b(): pass\n")
    snapshot = split_pytester.path / "snap" / "durations.json"
    monkeypatch.setenv(SNAPSHOT_ENV, str(snapshot))
    write_durations(split_pytester, {"test_ab.py::test_a": 1.0, "test_ab.py::test_b": 9.0})
    assert collected(split_pytester, "--heavy-split=1/2") == ["test_ab.py::test_b"]
    assert json.loads(snapshot.read_text())["test_ab.py::test_b"] == 9.0  # published by the first subset

    # What an earlier subset records no longer moves the later subsets' share.
    write_durations(split_pytester, {"test_ab.py::test_a": 9.0, "test_ab.py::test_b": 1.0})
    assert collected(split_pytester, "--heavy-split=2/2") == ["test_ab.py::test_a"]
    snapshot.unlink()
    assert collected(split_pytester, "--heavy-split=1/2") == ["test_ab.py::test_a"]


def test_subsets_run_in_turn_by_hand_cover_the_selection_once(split_pytester):
    """Each run records durations into the cache; the next subset must still partition as the first did."""
    split_pytester.makepyfile(**{f"test_m{m}": "import time\n" + "\n".join(
        f"def test_{t}(): time.sleep({(m * 6 + t) % 5} / 200)" for t in range(6)) for m in range(3)})
    selection = collected(split_pytester)
    assert len(selection) == 18
    ran: list[str] = []
    for round_ in range(2):  # the second round partitions with what the first recorded
        for i in range(1, 5):
            result = split_pytester.runpytest(f"--heavy-split={i}/4", "-v", "-p", "no:randomly")
            assert result.ret == 0, result.stdout.str()
            ran += [line.split(" ", 1)[0] for line in result.outlines if " PASSED" in line]
        assert sorted(ran) == sorted(selection), f"round {round_ + 1}"
        ran.clear()


def test_worst_status_ranks_no_tests_just_above_success():
    assert worst([0, 5, 0]) == 5
    assert worst([5, 1, 0]) == 1
    assert worst([1, 4, 2]) == 4
    assert worst([4, 3]) == 3
    assert worst([3, 137]) == 137  # killed by a signal


def split_cli(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.run(sys.executable, "-m", "pytest_heavy.cli", "split", *args, timeout=120)


def junit_cases(path: Path) -> list[str]:
    return [f"{c.get('classname')}::{c.get('name')}" for c in ET.parse(path).getroot().iter("testcase")]


def test_split_command_exits_with_the_worst_subset_and_merges_junit(split_pytester):
    split_pytester.makepyfile(
        test_one="def test_a(): pass\ndef test_b(): pass\n",
        test_two="import pytest\ndef test_c(): assert 0\ndef test_d(): pytest.skip('no')\n",
    )
    result = split_cli(split_pytester, "2", "-q")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["pytest-heavy split 2 (-j 1): 2 passed, 1 failed, 1 skipped, 0 errors in "
                                 "*s; exit 1 (*/2 exit 1); junit .heavy/split/junit.xml"])
    junit_dir = split_pytester.path / ".heavy/split"
    merged = ET.parse(junit_dir / "junit.xml").getroot()
    assert merged.tag == "testsuites"
    assert (merged.get("tests"), merged.get("failures"), merged.get("skipped")) == ("4", "1", "1")
    assert len(merged.findall("testsuite")) == 2
    names = junit_cases(junit_dir / "junit.xml")
    assert sorted(names) == ["test_one::test_a", "test_one::test_b", "test_two::test_c", "test_two::test_d"]
    parts = [junit_cases(junit_dir / f"junit-{i}-of-2.xml") for i in (1, 2)]
    assert all(parts) and sorted(parts[0] + parts[1]) == sorted(names)

    # The same merge for junit files from CI matrix jobs or Slurm array tasks.
    out = split_pytester.path / "merged.xml"
    status = cli.main(["split", "--merge-junit", str(out), *(str(junit_dir / f"junit-{i}-of-2.xml")
                                                             for i in (1, 2))])
    assert status == 1  # a test failed
    assert sorted(junit_cases(out)) == sorted(names)


def test_split_command_runs_subsets_at_once_with_prefixed_output(split_pytester):
    split_pytester.makepyfile(test_one="def test_a(): pass\ndef test_b(): pass\n")
    result = split_cli(split_pytester, "3", "-j", "2", "--junit-dir", "out")
    assert result.ret == 0  # one subset is empty by the split: not a failure
    out = result.stdout.str()
    for i in (1, 2, 3):
        assert f"[{i}/3] " in out
    result.stdout.fnmatch_lines(["[[]?/3] heavy split ?/3: this subset is empty*",
                                 "pytest-heavy split 3 (-j 2): 2 passed, 0 failed, 0 skipped, 0 errors in *"])
    merged = junit_cases(split_pytester.path / "out/junit.xml")
    assert sorted(merged) == ["test_one::test_a", "test_one::test_b"]


def test_split_command_combines_coverage(split_pytester):
    split_pytester.makepyfile(mod="def f(x):\n    if x:\n        return 1\n    return 2\n")
    split_pytester.makepyfile(test_one="from mod import f\ndef test_1(): assert f(1) == 1\n",
                              test_two="from mod import f\ndef test_2(): assert f(0) == 2\n")
    result = split_cli(split_pytester, "2", "--heavy-split-by", "module", "--cov=mod", "--cov-report=")
    assert result.ret == 0
    result.stdout.fnmatch_lines(["coverage: 2 subsets combined into *.coverage, 100% total"])
    assert (split_pytester.path / ".coverage").exists()
    assert not list(split_pytester.path.glob(".coverage.split-*"))


def test_github_actions_template_steps_run_as_written(split_pytester):
    """A local dry run of the matrix template in docs/splitting.md: each shard's step, then the merge
    job's coverage and junit steps, as the YAML writes them."""
    yaml = pytest.importorskip("yaml")
    path = split_pytester.path
    text = (ROOT / "docs/splitting.md").read_text()
    block = text.split("# .github/workflows/tests.yml\n", 1)[1].split("```", 1)[0]
    workflow = yaml.safe_load(block)
    shards = workflow["jobs"]["shard"]["strategy"]["matrix"]["shard"]
    step = next(s for s in workflow["jobs"]["shard"]["steps"] if s.get("name", "").startswith("tests"))
    split_pytester.makepyfile(
        mod="def f(x):\n    return 1 if x else 2\n",
        test_one="from mod import f\ndef test_1(): assert f(1) == 1\ndef test_2(): pass\n",
        test_two="from mod import f\ndef test_3(): assert f(0) == 2\ndef test_4(): pass\n")
    (path / "shards").mkdir()
    bindir = Path(sys.executable).parent
    env = {**os.environ, "PATH": os.pathsep.join([str(bindir), os.environ["PATH"]])}
    for shard in shards:
        command = (step["run"].replace("${{ matrix.shard }}", str(shard))
                   .replace("${{ env.SHARDS }}", str(workflow["env"]["SHARDS"])))
        step_env = {k: v.replace("${{ matrix.shard }}", str(shard)) for k, v in step["env"].items()}
        done = subprocess.run(command, shell=True, cwd=path, env={**env, **step_env})
        assert done.returncode == 0
        for name in (f"junit-{shard}.xml", f".coverage.shard-{shard}"):
            (path / name).rename(path / "shards" / name)
    merge_steps = workflow["jobs"]["merge"]["steps"]
    merge_runs = [s["run"] for s in merge_steps if "run" in s and "pip install" not in s["run"]]
    for command in merge_runs:
        done = subprocess.run(command, shell=True, cwd=path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    report = subprocess.run(["coverage", "report"], cwd=path, env=env, capture_output=True, text=True)
    assert "100%" in report.stdout
    assert sorted(junit_cases(path / "junit.xml")) == [
        "test_one::test_1", "test_one::test_2", "test_two::test_3", "test_two::test_4"]


@pytest.mark.parametrize(("args", "message"), [
    (("2", "--slurm-opt=--qos=low"), "--slurm-opt and --slurm-mps go with --slurm"),
    (("2", "--slurm", "-j", "2"), "-j does not apply"),
])
def test_slurm_usage_errors(split_pytester, args, message):
    result = split_cli(split_pytester, *args)
    assert result.ret == 2
    result.stderr.fnmatch_lines([f"*{message}*"])


def test_slurm_without_sbatch_says_so_and_submits_nothing(split_pytester, monkeypatch):
    split_pytester.makepyfile(test_one="def test_a(): pass\n")
    monkeypatch.setenv("PATH", str(split_pytester.path / "nothing-here"))
    result = split_cli(split_pytester, "2", "--slurm")
    assert result.ret == 3
    missing = "sbatch not found: is this a Slurm login node?"
    result.stderr.fnmatch_lines([f"pytest-heavy split 2 --slurm: {missing}"])
    plan = json.loads((split_pytester.path / ".heavy/split/plan.json").read_text())
    assert plan["n"] == 2 and [u["nodeids"] for u in plan["units"].values()] == [["test_one.py::test_a"]]
