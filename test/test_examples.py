"""Examples as tests: header parsing, collection without import, outcomes, timeouts, selection, reports.

Every behaviour is checked with real pytest sessions (pytester) running real example subprocesses.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import psutil
import pytest

from pytest_heavy.examples.header import HeaderError, parse_header

INI = """\
[pytest]
heavy_ram_gib = 4
heavy_optional_modules = nosuch_optional_mod other_pkg.sub json
{extra}
"""


@pytest.fixture
def ex(heavy_pytester: pytest.Pytester) -> pytest.Pytester:
    heavy_pytester.makeini(INI.format(extra=""))
    return heavy_pytester


def write(pytester: pytest.Pytester, relpath: str, text: str) -> Path:
    path = pytester.path / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def short_summary(result: pytest.RunResult) -> dict[str, str]:
    """{node id: 'PASSED' / 'FAILED ...' / 'SKIPPED reason'} from -rA short summary lines."""
    got = {}
    for line in result.outlines:
        m = re.match(r"(PASSED|FAILED|ERROR) (\S+::example)", line)
        if m:
            got[m.group(2)] = m.group(1)
        m = re.match(r"SKIPPED \[1\] (\S+?)(?::\d+)?: (.*)", line)
        if m:
            got[m.group(1) + "::example"] = "SKIPPED " + m.group(2)
    return got


def test_header_markers_arguments_and_options() -> None:
    header = parse_header(3, " requires_gpu, requires_vram(24), huggingface, timeout=90, skip")
    assert header.line == 3
    assert [(m.name, m.args, m.kwargs) for m in header.marks] == [
        ("requires_gpu", (), {}), ("requires_vram", (24,), {}), ("huggingface", (), {})]
    assert header.timeout == 90.0
    assert header.skip == "example header says skip"
    header = parse_header(1, "requires_vram(gb=40.5), skip_always='needs a server', timeout=1.5")
    assert [(m.name, m.args, m.kwargs) for m in header.marks] == [("requires_vram", (), {"gb": 40.5})]
    assert (header.timeout, header.skip) == (1.5, "needs a server")
    assert parse_header(2, "  ") == parse_header(2, "")
    assert parse_header(2, "").marks == () and parse_header(2, "").timeout is None


@pytest.mark.parametrize(("text", "message"), [
    ("timeout=0", "timeout=0: expected a positive number of seconds"),
    ("timeout='10'", "expected a positive number of seconds"),
    ("timeout=True", "expected a positive number of seconds"),
    ("timeout=__import__('os').getcwd()", "is not a literal"),
    ("requires_vram(big)", "arguments of requires_vram: 'big' is not a literal"),
    ("requires_vram('lots')", "requires_vram expects a number of GiB"),
    ("requires_heavy_ram(gib='lots')", "requires_heavy_ram expects a number of GiB"),
    ("requires_gpu(count=0)", "requires_gpu expects a whole number of GPUs >= 1"),
    ("requires_vram(**opts)", "**kwargs is not allowed"),
    ("pytest.mark.slow", "is not a marker"),
    ("slow, 3", "'3' is not a marker"),
    ("retries=3", "unknown option 'retries'"),
    ("skip=''", "expected a reason string"),
    ("slow), _(qualitative", "cannot parse"),
    ("slow qualitative", "cannot parse"),
    ("requires_vram(24", "cannot parse"),
])
def test_header_errors(text: str, message: str) -> None:
    with pytest.raises(HeaderError) as excinfo:
        parse_header(1, text)
    assert message in str(excinfo.value)


def test_malformed_headers_are_collection_errors_naming_file_and_line(ex: pytest.Pytester) -> None:
    write(ex, "docs/examples/good.py", "# pytest: slow\n")
    write(ex, "docs/examples/bad_timeout.py", "#!/usr/bin/env python\n# About this.\n# pytest: timeout=-1\n")
    write(ex, "docs/examples/bad_args.py", "# Needs a big GPU.\n# pytest: requires_vram(24 GiB)\n")
    write(ex, "docs/examples/sub/unknown.py", "# pytest: requires_gpu, nosuch_marker\n")
    result = ex.runpytest("--strict-markers", "--collect-only", "-q", "docs/examples")
    result.assert_outcomes(errors=3)
    result.stdout.fnmatch_lines_random([
        "docs/examples/bad_timeout.py:3: bad '# pytest:' header: timeout=-1: expected a positive number*",
        "docs/examples/bad_args.py:2: bad '# pytest:' header: cannot parse 'requires_vram(24 GiB)'*",
        "docs/examples/sub/unknown.py:1: bad '# pytest:' header: marker 'nosuch_marker': "
        "'nosuch_marker' not found in `markers` configuration option",
    ])
    assert result.ret == pytest.ExitCode.INTERRUPTED


def test_unknown_marker_without_strict_warns_at_the_header(ex: pytest.Pytester) -> None:
    write(ex, "docs/examples/unknown.py", "# First line.\n# pytest: nosuch_marker\n")
    result = ex.runpytest("-q", "docs/examples")
    result.assert_outcomes(passed=1, warnings=1)
    result.stdout.fnmatch_lines([
        "*warnings summary*", "docs/examples/unknown.py:2",
        "*unknown.py:2: PytestUnknownMarkWarning: Unknown pytest.mark.nosuch_marker*",
    ])


def test_examples_and_helpers_are_never_imported_by_the_parent(ex: pytest.Pytester) -> None:
    """Every file here records which process imported it; only example subprocesses may have."""
    record = textwrap.dedent("""
        import os, pathlib
        here = pathlib.Path(__file__)
        (here.parent / f"imported-{here.stem}-{os.getpid()}").write_text("")
        print("IMPORTED", here.name)
    """)
    write(ex, "docs/examples/test_named_like_a_test.py", "# pytest:\n" + record)
    write(ex, "docs/examples/helper.py", record + "\ndef greet():\n    return 'hi'\n")
    write(ex, "docs/examples/uses_helper.py", "# pytest:\nimport helper\nassert helper.greet() == 'hi'\n")
    write(ex, "docs/examples/pkg/__init__.py", record)
    write(ex, "docs/examples/pkg/test_inner.py", "# Nested in a package.\n" + "# pytest:\n" + record)
    write(ex, "docs/examples/pkg/test_no_header.py", record + "\ndef test_would_run():\n    pass\n")
    examples = ex.path / "docs" / "examples"
    expected = ["docs/examples/test_named_like_a_test.py::example", "docs/examples/uses_helper.py::example",
                "docs/examples/pkg/test_inner.py::example"]

    def imported() -> list[Path]:
        return sorted(examples.rglob("imported-*"))

    def loaded_by_parent() -> list[str]:
        return [name for name, mod in list(sys.modules.items())
                if str(getattr(mod, "__file__", None) or "").startswith(str(examples))]

    result = ex.runpytest("--collect-only", "-q", "--doctest-modules")  # walks the rootdir
    assert sorted(line for line in result.outlines if "::" in line) == sorted(expected)
    assert imported() == [] and loaded_by_parent() == []

    result = ex.runpytest("-rA", "--doctest-modules", "docs/examples/test_named_like_a_test.py",
                          "docs/examples/pkg/test_inner.py", "docs/examples/uses_helper.py")
    result.assert_outcomes(passed=3)
    assert loaded_by_parent() == []
    # Two examples and the helper (imported by the third), each by an example's process; not __init__.py.
    files = sorted(p.name.rsplit("-", 1)[0] for p in imported())
    assert files == ["imported-helper", "imported-test_inner", "imported-test_named_like_a_test"]
    assert not any(p.name.endswith(f"-{os.getpid()}") for p in imported())


def test_outcomes_exit_status_skips_and_optional_modules(ex: pytest.Pytester) -> None:
    write(ex, "docs/examples/passes.py", """
        # pytest:
        import sys
        print("to stdout")
        print("to stderr", file=sys.stderr)
    """)
    write(ex, "docs/examples/exits_3.py", """
        # pytest:
        import sys
        for i in range(50):
            print(f"stderr line L{i:02d}", file=sys.stderr)
        sys.exit(3)
    """)
    write(ex, "docs/examples/raises.py",
          "# pytest:\ndef main():\n    raise ValueError('bad value')\nmain()\n")
    write(ex, "docs/examples/aborts.py", "# pytest:\nimport os\nos.abort()\n")
    write(ex, "docs/examples/exit_77.py", """
        # pytest:
        import sys
        print("checking for the server", file=sys.stderr)
        print("needs a server on port 8080", file=sys.stderr)
        sys.exit(77)
    """)
    write(ex, "docs/examples/optional.py", "# pytest:\nimport nosuch_optional_mod\n")
    write(ex, "docs/examples/optional_parent.py", "# pytest:\nimport other_pkg.sub\n")
    write(ex, "docs/examples/not_optional.py", "# pytest:\nimport definitely_not_listed_mod\n")
    write(ex, "docs/examples/listed_but_installed.py", "# pytest:\nimport json.nosuch_submodule\n")
    write(ex, "docs/examples/header_skip.py", "# pytest: skip='needs a GPU cluster'\nraise SystemExit(1)\n")
    result = ex.runpytest("-rA", "docs/examples")
    result.assert_outcomes(passed=1, failed=5, skipped=4)
    assert short_summary(result) == {
        "docs/examples/passes.py::example": "PASSED",
        "docs/examples/exits_3.py::example": "FAILED",
        "docs/examples/raises.py::example": "FAILED",
        "docs/examples/aborts.py::example": "FAILED",
        "docs/examples/not_optional.py::example": "FAILED",
        "docs/examples/listed_but_installed.py::example": "FAILED",
        "docs/examples/exit_77.py::example": "SKIPPED needs a server on port 8080",
        "docs/examples/optional.py::example": "SKIPPED optional dependency nosuch_optional_mod not installed",
        "docs/examples/optional_parent.py::example":
            "SKIPPED optional dependency other_pkg.sub not installed",
        "docs/examples/header_skip.py::example": "SKIPPED needs a GPU cluster",
    }
    out = result.stdout.str()
    exits_3 = out[out.index("docs/examples/exits_3.py::example failed: exit 3"):]
    exits_3 = exits_3[:exits_3.index("Captured stderr call")]
    assert "last 40 lines of stderr:" in exits_3
    assert "stderr line L10" in exits_3 and "stderr line L49" in exits_3 and "stderr line L09" not in exits_3
    result.stdout.fnmatch_lines_random([
        "docs/examples/aborts.py::example failed: SIGABRT",
        "docs/examples/not_optional.py::example failed: exit 1",
        "ModuleNotFoundError: No module named 'definitely_not_listed_mod'",
        "ModuleNotFoundError: No module named 'json.nosuch_submodule'",
        "SKIPPED [[]1[]] docs/examples/exit_77.py:1: needs a server on port 8080",
    ])
    raises = out[out.index("docs/examples/raises.py::example failed: exit 1"):]
    raises = raises[:raises.index("ValueError: bad value")]
    # The traceback is the one `python raises.py` prints: no frames of the runner.
    assert 'raises.py", line 4, in <module>' in raises and "runpy" not in raises and "<string>" not in raises


@pytest.mark.slow
def test_timeout_dumps_stacks_then_terminates_the_whole_session(ex: pytest.Pytester) -> None:
    ex.makeini(INI.format(extra="heavy_example_timeout_s = 1"))
    write(ex, "docs/examples/hangs.py", """
        # pytest: timeout=1
        import signal, subprocess, sys, time
        same_session = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        own_session = subprocess.Popen(
            [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
             "print('ready', flush=True); time.sleep(120)"],
            start_new_session=True, stdout=subprocess.PIPE)
        own_session.stdout.readline()
        print("grandchildren", same_session.pid, own_session.pid, flush=True)
        def wait_for_godot():
            time.sleep(120)
        wait_for_godot()
    """)
    write(ex, "docs/examples/ini_timeout.py", "# pytest:\nimport time\ntime.sleep(120)\n")
    result = ex.runpytest("-rA", "docs/examples")
    result.assert_outcomes(failed=2)
    assert result.duration < 20
    out = result.stdout.str()
    pids = [int(p) for p in re.search(r"grandchildren (\d+) (\d+)", out).groups()]  # type: ignore[union-attr]
    result.stdout.fnmatch_lines([
        "docs/examples/hangs.py::example timed out after 1 s (header timeout=1); its process session was "
        "terminated (SIGTERM, then SIGKILL)",
        "Python stacks at the timeout (faulthandler):",
        "*most recent call first*",
        '*hangs.py", line 11 in wait_for_godot',
        '*hangs.py", line 12 in <module>',
    ])
    result.stdout.fnmatch_lines_random([
        f"terminated: pid {pids[0]} (*python -c import time; time.sleep(120))",
        f"terminated: pid {pids[1]} (*python -c import signal, time;*)",
        f"killed (still alive after 5 s): pid {pids[1]} (*python -c import signal, time;*)",
        "terminated: pid * (the example)",
        "docs/examples/ini_timeout.py::example timed out after 1 s (ini heavy_example_timeout_s);*",
        '*ini_timeout.py", line 3 in <module>',
    ])
    for pid in pids:
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_a_megabyte_of_output_on_both_pipes_does_not_deadlock(ex: pytest.Pytester) -> None:
    write(ex, "docs/examples/chatty.py", """
        # pytest: timeout=60
        import sys
        for i in range(16384):
            sys.stdout.write(f"out {i:06d} " + "o" * 52 + "\\n")
            sys.stderr.write(f"err {i:06d} " + "e" * 52 + "\\n")
        sys.exit(1)
    """)
    result = ex.runpytest("-rA", "docs/examples")
    result.assert_outcomes(failed=1)
    assert result.duration < 30
    message = result.stdout.str().split("last 40 lines of stderr:", 1)[1].split("Captured stdout call")[0]
    assert "err 016383" in message and "err 016344" in message and "err 016343" not in message
    assert result.stdout.str().count("out 0") >= 16384  # the whole stdout section is kept


@pytest.fixture
def tiers_suite(ex: pytest.Pytester) -> pytest.Pytester:
    for name, header in [("plain", ""), ("slow_one", "slow"), ("qual", "qualitative"),
                         ("gpu", "requires_gpu"), ("hf", "huggingface, timeout=30"),
                         ("vram", "requires_vram(24)")]:
        write(ex, f"docs/examples/{name}.py", f"# pytest: {header}\n")
    return ex


def test_selection_tiers_and_hardware_gating_apply_to_header_markers(
        tiers_suite: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = tiers_suite.runpytest("-rA", "docs/examples")
    result.assert_outcomes(passed=2, skipped=3, deselected=1)
    assert short_summary(result) == {
        "docs/examples/plain.py::example": "PASSED",
        "docs/examples/qual.py::example": "PASSED",
        "docs/examples/gpu.py::example": "SKIPPED needs a GPU (requires_gpu): --heavy-assume gpus=0",
        "docs/examples/hf.py::example": "SKIPPED needs a GPU (huggingface): --heavy-assume gpus=0",
        "docs/examples/vram.py::example": "SKIPPED needs a GPU (requires_vram): --heavy-assume gpus=0",
    }
    tiers_suite.runpytest("-m", "not qualitative", "docs/examples").assert_outcomes(
        passed=1, skipped=3, deselected=2)
    tiers_suite.runpytest("-m", "slow", "docs/examples").assert_outcomes(passed=1, deselected=5)
    tiers_suite.runpytest("-k", "plain or vram", "docs/examples").assert_outcomes(
        passed=1, skipped=1, deselected=4)
    result = tiers_suite.runpytest("-rA", "--heavy-assume", "gpus=1x16GiB", "docs/examples")
    result.assert_outcomes(passed=4, skipped=1, deselected=1)
    assert short_summary(result)["docs/examples/vram.py::example"] == (
        "SKIPPED needs a GPU with 24 GiB (requires_vram): largest visible GPU has 16.0 GiB (assumed GPU)")
    monkeypatch.setenv("CICD", "1")
    result = tiers_suite.runpytest("-rA", "--heavy-ignore-gpu-check", "docs/examples")
    result.assert_outcomes(passed=4, skipped=1, deselected=1)
    assert short_summary(result)["docs/examples/qual.py::example"] == (
        "SKIPPED CICD=1: qualitative tests are skipped in CI")


def test_node_ids_junit_and_last_failed(ex: pytest.Pytester) -> None:
    write(ex, "docs/examples/safety/guard.py", "# pytest: qualitative\nraise SystemExit('guard tripped')\n")
    write(ex, "docs/examples/safety/fine.py", "# pytest:\n")
    result = ex.runpytest("--junitxml=junit.xml", "docs/examples")
    result.assert_outcomes(passed=1, failed=1)
    cases = {(c.get("classname"), c.get("name")): c for c in ET.parse(ex.path / "junit.xml").iter("testcase")}
    assert set(cases) == {("docs.examples.safety.guard", "example"), ("docs.examples.safety.fine", "example")}
    failure = cases["docs.examples.safety.guard", "example"].find("failure")
    assert failure is not None
    assert "docs/examples/safety/guard.py::example failed: exit 1" in failure.get("message", "")
    assert "guard tripped" in (failure.text or "")
    result = ex.runpytest("--lf", "-v", "docs/examples")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["docs/examples/safety/guard.py::example FAILED*"])
    result = ex.runpytest("-v", "docs/examples/safety/fine.py::example")
    result.stdout.fnmatch_lines(["docs/examples/safety/fine.py::example PASSED*"])


def test_heavy_report_rows_and_leftover_processes(ex: pytest.Pytester) -> None:
    write(ex, "docs/examples/leaves_a_sleeper.py", """
        # pytest:
        import subprocess, sys
        sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print("sleeper", sleeper.pid)
    """)
    write(ex, "docs/examples/fails.py", "# pytest:\nimport sys\nsys.exit(2)\n")
    result = ex.runpytest("-rA", "--heavy-report=heavy.json", "docs/examples")
    result.assert_outcomes(passed=1, failed=1)
    doc = json.loads((ex.path / "heavy.json").read_text())
    rows = {row["unit"]: row for row in doc["modules"]}
    leaves = rows["docs/examples/leaves_a_sleeper.py::example"]
    fails = rows["docs/examples/fails.py::example"]
    for row in (leaves, fails):
        assert (row["kind"], row["start_method"], row["tests"]) == ("example", "subprocess", 1)
        assert row["peak_rss_mib"] > 0 and row["wall_s"] > 0 and row["peak_gpu_mib"] is None
    assert (leaves["outcomes"], leaves["exit"]) == ({"passed": 1}, "exit 0")
    assert (fails["outcomes"], fails["exit"]) == ({"failed": 1}, "exit 2")
    pid = int(re.search(r"sleeper (\d+)", result.stdout.str()).group(1))  # type: ignore[union-attr]
    assert len(leaves["killed"]) == 1 and leaves["killed"][0].startswith(f"pid {pid} (")
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    result.stdout.fnmatch_lines([
        "*heavy modules (pytest-heavy)*",
        "module * tests * outcomes * start*",
        "docs/examples/fails.py::example * 1 * 1 failed * subprocess * exit 2",
        f"docs/examples/leaves_a_sleeper.py::example: killed leftover process pid {pid} (*time.sleep(120))",
    ])


@pytest.mark.parametrize("cwd", ["rootdir", "file"])
def test_environment_cwd_and_argv(ex: pytest.Pytester, cwd: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ex.makeini(INI.format(extra=f"heavy_examples_cwd = {cwd}\nheavy_env = EXAMPLE_FLAVOUR=plain"))
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    write(ex, "docs/examples/nested/env.py", """
        # pytest:
        import sys
        loaded = sorted(sys.modules)  # before its own imports: what the runner preloaded
        import json, os, pathlib, pickle

        class Point:
            pass

        facts = {
            "loaded": loaded, "pickled": pickle.loads(pickle.dumps(Point)) is Point,
            "runner_names": [n for n in ("run", "faulthandler", "stacks", "main", "code") if n in dir()],
            "package": __package__, "spec": __spec__,
            "cwd": os.getcwd(), "argv": sys.argv, "name": __name__, "file": __file__, "path0": sys.path[0],
            "pythonpath": os.environ.get("PYTHONPATH", "").split(os.pathsep),
            "alloc": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"), "flavour": os.environ.get("EXAMPLE_FLAVOUR"),
            "hardware": "PYTEST_HEAVY_HARDWARE" in os.environ, "own_session": os.getsid(0) == os.getpid(),
            "stdin": sys.stdin.read(), "executable": sys.executable,
        }
        (pathlib.Path(__file__).parent / "facts.json").write_text(json.dumps(facts))
    """)
    ex.runpytest("docs/examples").assert_outcomes(passed=1)
    facts = json.loads((ex.path / "docs/examples/nested/facts.json").read_text())
    example = str(ex.path / "docs/examples/nested/env.py")
    assert facts["cwd"] == str(ex.path if cwd == "rootdir" else ex.path / "docs/examples/nested")
    assert (facts["argv"], facts["name"], facts["file"]) == ([example], "__main__", example)
    assert facts["path0"] == str(ex.path / "docs/examples/nested")
    assert facts["pythonpath"][0] == str(ex.path)
    assert facts["alloc"] == "expandable_segments:True"
    assert (facts["flavour"], facts["hardware"]) == ("plain", True)
    assert (facts["own_session"], facts["stdin"], facts["executable"]) == (True, "", sys.executable)
    # Run as `python <file>` runs it: its own __main__ (pickling by reference works), none of the
    # runner's names, and no module loaded that a direct run does not load, but faulthandler.
    assert (facts["pickled"], facts["runner_names"]) == (True, [])
    assert (facts["package"], facts["spec"]) == (None, None)
    subprocess.run([sys.executable, example], cwd=ex.path, env=os.environ | {"EXAMPLE_FLAVOUR": "plain"},
                   stdin=subprocess.DEVNULL, check=True)
    loaded_directly = json.loads((ex.path / "docs/examples/nested/facts.json").read_text())["loaded"]
    assert set(facts["loaded"]) - set(loaded_directly) <= {"faulthandler"}


def test_dash_s_streams_the_output_live(ex: pytest.Pytester) -> None:
    write(ex, "docs/examples/talks.py", "# pytest:\nimport sys\nprint('LIVE-OUT')\nsys.exit('LIVE-ERR')\n")
    result = ex.runpytest_subprocess("-s", "-rA", "docs/examples")
    result.assert_outcomes(failed=1)
    assert "LIVE-OUT" in result.stdout.str() and "LIVE-ERR" in result.stderr.str()
    # Already on the terminal: not repeated as report sections, but still in the failure message.
    assert "Captured std" not in result.stdout.str()
    result.stdout.fnmatch_lines(["docs/examples/talks.py::example failed: exit 1", "last 40 lines of stderr:",
                                 "LIVE-ERR"])


def test_an_example_with_an_isolation_marker_is_not_wrapped_in_a_second_process(ex: pytest.Pytester) -> None:
    """Two heavy modules make isolation start; the example still runs once, as its own subprocess."""
    heavy = "import pytest\npytestmark = pytest.mark.requires_heavy_ram\ndef test_x(): pass\n"
    ex.makepyfile(test_h1=heavy, test_h2=heavy)
    write(ex, "docs/examples/big.py", "# pytest: requires_heavy_ram\nprint('loaded')\n")
    result = ex.runpytest("-rA")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["docs/examples/big.py::example * 1 passed * subprocess *exit 0",
                                 "test_h1.py * 1 passed *", "test_h2.py * 1 passed *"])


WAITS = """\
# pytest:
import os, pathlib, subprocess, sys, time
sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"])
pathlib.Path("pids").write_text(f"{os.getpid()} {sleeper.pid}")
time.sleep(1000)
"""


def test_a_sigkilled_parent_ends_the_running_example_and_its_session(ex: pytest.Pytester) -> None:
    """pytest killed by SIGKILL cannot end the example itself: the session's watchdog does, and
    everything in the example's session with it."""
    write(ex, "docs/examples/waits.py", WAITS)
    pids_file = ex.path / "pids"
    parent = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "docs/examples"],
                              cwd=ex.path, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while len(pids_file.read_text().split() if pids_file.exists() else []) < 2:
            assert parent.poll() is None and time.monotonic() < deadline, "the example never started"
            time.sleep(0.05)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    started = [psutil.Process(int(pid)) for pid in pids_file.read_text().split()]
    deadline = time.monotonic() + 10
    while (alive := [p for p in started if _running(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    for proc in alive:
        proc.kill()
    assert not alive, f"outlived their SIGKILLed parent: {alive}"


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def test_what_compiling_says_reaches_the_examples_stderr(ex: pytest.Pytester) -> None:
    """pytest compiles an example's code for it, except where compiling reports something: a syntax
    error, or a warning (here made an error by the example's environment, as `python -W error` would)."""
    ex.makeini(INI.format(extra="heavy_env = PYTHONWARNINGS=error"))
    write(ex, "docs/examples/broken.py", "# pytest:\nvalues = (1,\n")
    write(ex, "docs/examples/escape.py", '# pytest:\npattern = "\\d+"\n')
    write(ex, "docs/examples/fine.py", "# pytest:\nimport sys\nassert __name__ == '__main__'\n")
    result = ex.runpytest("-rA", "docs/examples")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines_random([
        "docs/examples/broken.py::example failed: exit 1",
        "*broken.py*line 2*",
        "SyntaxError: *",
        "docs/examples/escape.py::example failed: exit 1",
        "SyntaxError: invalid escape sequence*",
    ])
