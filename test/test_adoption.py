"""What a real ML library needs to delete its conftest (issue #24), and the one needs record per item.

Each behaviour is checked with real pytest sessions (pytester); GPU machines are assumed with
``--heavy-assume`` (``PYTEST_HEAVY_ASSUME``), Apple silicon with its ``apple_mps`` field.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_heavy import assume
from pytest_heavy.hardware import GPU, Hardware
from pytest_heavy.isolation.schedule import Job, Placement
from pytest_heavy.isolation.schedule.packing import PackingScheduler

GIB = 1024


def write(pytester: pytest.Pytester, relpath: str, text: str) -> Path:
    path = pytester.path / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def skip_reasons(result: pytest.RunResult) -> list[str]:
    """The reasons of pytest's -rs lines, in order."""
    return [m.group(1) for line in result.outlines if (m := re.match(r"SKIPPED \[\d+\] \S+: (.*)", line))]


def outcomes(result: pytest.RunResult) -> dict[str, str]:
    """{node id: outcome} from -v lines."""
    return {m.group(1): m.group(2) for line in result.outlines
            if (m := re.match(r"(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)", line))}


# --- one needs record per item, validated once at collection ----------------------------------------

BAD_COUNT = """
import pytest
pytestmark = pytest.mark.requires_gpu_isolation

@pytest.mark.requires_gpu(count="two")
def test_x():
    pass
"""


@pytest.mark.parametrize("machine", [("--heavy-assume", "gpus=2x80GiB"), ("--heavy-assume", "gpus=0"),
                                     ("--heavy-ignore-gpu-check",)],
                         ids=["gpu-machine", "cpu-machine", "ignore-gpu-check"])
def test_a_bad_marker_argument_is_the_same_usage_error_everywhere(heavy_pytester: pytest.Pytester,
                                                                  machine: tuple[str, ...]) -> None:
    """Before: a usage error on a GPU machine, a silent skip on a CPU one, INTERNALERROR (exit 3) with
    --heavy-ignore-gpu-check (the plan read the mark again)."""
    heavy_pytester.makepyfile(test_bad=BAD_COUNT)
    result = heavy_pytester.runpytest("--heavy-isolate=always", *machine)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_bad.py::test_x: requires_gpu expects a whole number of GPUs*'two'*"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize("mark", ['requires_heavy_ram(gib="lots")', "requires_heavy_ram(gib=-1)",
                                  "requires_vram()", "requires_gpu(gpus=2)", "require_ram()",
                                  "require_ram(a=1, b=2)"])
def test_bad_amounts_are_usage_errors_naming_the_test(heavy_pytester: pytest.Pytester, mark: str) -> None:
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_resource_markers = require_ram=ram\n")
    heavy_pytester.makepyfile(test_amounts=f"import pytest\n@pytest.mark.{mark}\ndef test_x(): pass\n")
    result = heavy_pytester.runpytest("--heavy-ignore-ram-check")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*test_amounts.py::test_x: {mark.split('(')[0]}*expects*"])


# --- amounts on markers ------------------------------------------------------------------------------


def test_ram_amounts_per_test_and_module_and_project_resource_markers(
        heavy_pytester: pytest.Pytester) -> None:
    heavy_pytester.makeini("""
        [pytest]
        heavy_ram_gib = 4
        heavy_isolate = never
        heavy_resource_markers =
            require_ram = ram
            require_gpus = gpus
            require_vram = vram
    """)
    heavy_pytester.makepyfile(test_big="""
        import pytest
        pytestmark = pytest.mark.requires_heavy_ram(gib=64)

        def test_module_amount(): pass

        @pytest.mark.requires_heavy_ram(gib=8)
        def test_own_amount_is_closer(): pass
    """, test_small="""
        import pytest

        @pytest.mark.requires_heavy_ram
        def test_default_amount(): pass

        @pytest.mark.requires_heavy_ram(12)
        def test_positional(): pass

        @pytest.mark.require_ram(min_gb=32)
        def test_project_marker(): pass

        @pytest.mark.require_gpus(2)
        def test_project_gpus(): pass

        @pytest.mark.require_vram(40)
        def test_project_vram(): pass
    """)
    result = heavy_pytester.runpytest("-v", "-rs", "--heavy-assume", "gpus=1x24GiB,ram=16GiB")
    assert outcomes(result) == {
        "test_big.py::test_module_amount": "SKIPPED",
        "test_big.py::test_own_amount_is_closer": "PASSED",
        "test_small.py::test_default_amount": "PASSED",
        "test_small.py::test_positional": "PASSED",
        "test_small.py::test_project_marker": "SKIPPED",
        "test_small.py::test_project_gpus": "SKIPPED",
        "test_small.py::test_project_vram": "SKIPPED",
    }
    assert skip_reasons(result) == [
        "needs 64 GiB RAM (requires_heavy_ram): this machine has 16.0 GiB",
        "needs 32 GiB RAM (require_ram): this machine has 16.0 GiB",
        "needs 2 GPUs (require_gpus(2)): 1 visible",
        "needs a GPU with 40 GiB (require_vram): largest visible GPU has 24.0 GiB (assumed GPU)",
    ]


def test_the_packing_scheduler_reads_the_ram_amount_of_an_unrecorded_module() -> None:
    hw = Hardware(cpus=8, ram_total_mib=64 * GIB, ram_available_mib=64 * GIB)
    sched = PackingScheduler(hw, {}, tolerance_mib=256, ram_need_mib=48 * GIB)
    small = [Job("a", heavy_ram=True, ram_mib=20 * GIB), Job("b", heavy_ram=True, ram_mib=20 * GIB)]
    for job in small:
        picked = sched.pick([job])
        assert picked is not None
        sched.started(*picked)
    assert sched.pick([Job("c", heavy_ram=True, ram_mib=30 * GIB)]) is None  # 20 + 20 + 30 > 64
    fresh = PackingScheduler(hw, {}, tolerance_mib=256, ram_need_mib=48 * GIB)
    fresh.started(Job("a", heavy_ram=True), Placement())
    assert fresh.pick([Job("b", heavy_ram=True)]) is None  # no amount: heavy_ram_gib (48) each


def test_the_packing_scheduler_places_a_vram_amount_on_a_gpu_that_large() -> None:
    gpus = (GPU(0, "GPU-small", "small", 16 * GIB, 0), GPU(1, "GPU-large", "large", 80 * GIB, 0))
    sched = PackingScheduler(Hardware(gpus=gpus, cpus=8), {}, tolerance_mib=256, ram_need_mib=0)
    sched.started(Job("first", gpus=1), Placement((1,), True))  # the large GPU is taken
    big = Job("big", gpus=1, vram_mib=40 * GIB)
    assert sched.pick([big]) is None  # waits for the large GPU rather than starting on the small one
    assert sched.pick([Job("any", gpus=1)]) == (Job("any", gpus=1), Placement((0,), True))
    sched.finished(Job("first", gpus=1))
    assert sched.pick([big]) == (big, Placement((1,), True))


def test_doctor_plan_packs_by_the_marks_ram_amounts(heavy_pytester: pytest.Pytester) -> None:
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 48\nheavy_durations_path = durations.json\n")
    body = "import pytest\npytestmark = pytest.mark.requires_heavy_ram(gib=20)\ndef test_x(): pass\n"
    heavy_pytester.makepyfile(test_a=body, test_b=body)
    (heavy_pytester.path / "durations.json").write_text(json.dumps({"durations": {}, "peaks": {}}))
    command = [sys.executable, "-m", "pytest_heavy.cli", "doctor", "--plan", "--json",
               "--heavy-assume", "gpus=0,ram=64GiB,cpus=4"]
    doc = json.loads(subprocess.run(command, cwd=heavy_pytester.path, capture_output=True, text=True,
                                    check=True).stdout)
    assert [(m["module"], m["start_s"]) for m in doc["modules"]] == [("test_a.py", 0.0), ("test_b.py", 0.0)]


# --- package gating per marker -----------------------------------------------------------------------

VLLM_TEST = """
import pytest

@pytest.mark.vllm
def test_through_the_server(): pass

@pytest.mark.backend_x
def test_backend_x(): pass
"""


@pytest.mark.parametrize(("ini", "expected"), [
    ("", {"test_v.py::test_through_the_server": "SKIPPED", "test_v.py::test_backend_x": "PASSED"}),
    ("heavy_marker_packages =", {"test_v.py::test_through_the_server": "PASSED",
                                 "test_v.py::test_backend_x": "PASSED"}),
    ("heavy_marker_packages = backend_x=nosuch_backend_pkg",
     {"test_v.py::test_through_the_server": "PASSED", "test_v.py::test_backend_x": "SKIPPED"}),
], ids=["default", "off", "own-marker"])
def test_package_gating_is_configurable_per_marker_and_off(heavy_pytester: pytest.Pytester, ini: str,
                                                            expected: dict[str, str]) -> None:
    heavy_pytester.makeini(f"[pytest]\nheavy_ram_gib = 4\nheavy_isolate = never\nmarkers = backend_x\n"
                           f"{ini}\n")
    heavy_pytester.makepyfile(test_v=VLLM_TEST)
    result = heavy_pytester.runpytest("-v", "-rs", "--heavy-assume", "gpus=1x80GiB,ram=16GiB")
    assert outcomes(result) == expected
    for reason in skip_reasons(result):
        assert re.fullmatch(r"needs (vllm|nosuch_backend_pkg) \((vllm|backend_x) marker\): the \S+ package "
                            r"is not installed \(heavy_marker_packages\)", reason)


def test_a_bad_marker_packages_line_is_a_usage_error(heavy_pytester: pytest.Pytester) -> None:
    heavy_pytester.makeini("[pytest]\nheavy_marker_packages = vllm\n")
    result = heavy_pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini heavy_marker_packages line 'vllm': expected MARKER=PACKAGE*"])


# --- the gated summary counts what -rs shows ---------------------------------------------------------

OWN_SKIPS = """
import pytest

@pytest.mark.skipif(True, reason="project: CICD=1 skips this")
@pytest.mark.requires_gpu
def test_project_skips_first(): pass

@pytest.mark.skip(reason="project: flaky")
@pytest.mark.requires_gpu
def test_project_skip_mark(): pass

@pytest.mark.requires_gpu
def test_ours(): pass
"""


def test_the_gated_summary_counts_only_skips_that_carry_our_reason(heavy_pytester: pytest.Pytester) -> None:
    heavy_pytester.makepyfile(test_own=OWN_SKIPS)
    result = heavy_pytester.runpytest()
    result.assert_outcomes(skipped=3)
    result.stdout.fnmatch_lines(["pytest-heavy: 1 gated: 1 needs a GPU (--heavy-assume gpus=0); 2 more "
                                 "would be gated but the project's own skip marks skipped them first*"
                                 "(-rs for details)"])
    result = heavy_pytester.runpytest("-rs")
    reasons = skip_reasons(result)
    assert sorted(reasons) == ["needs a GPU (requires_gpu): --heavy-assume gpus=0",
                               "project: CICD=1 skips this", "project: flaky"]
    out = result.stdout.str()
    section = out[out.index("gated tests (pytest-heavy)"):].splitlines()[1:3]
    assert section == ["1 needs a GPU (--heavy-assume gpus=0)",
                       "2 more would be gated but the project's own skip marks skipped them first "
                       "(their reasons are the project's)"]


# --- tiers say what they deselected -------------------------------------------------------------------


@pytest.mark.parametrize("args", [("-q",), ("-q", "-m", "not qualitative"), ()])
def test_a_summary_line_says_how_many_slow_tests_the_tier_deselected(heavy_pytester: pytest.Pytester,
                                                                     args: tuple[str, ...]) -> None:
    heavy_pytester.makepyfile(test_t="""
        import pytest
        def test_fast(): pass
        @pytest.mark.slow
        def test_slow_1(): pass
        @pytest.mark.slow
        def test_slow_2(): pass
        @pytest.mark.qualitative
        def test_quality(): pass
    """)
    result = heavy_pytester.runpytest(*args)
    result.stdout.fnmatch_lines(["pytest-heavy: 2 slow tests deselected by the default tier "
                                 "(heavy_skip_slow_by_default); run only them with -m slow, or include them "
                                 "with --heavy-run-slow or heavy_skip_slow_by_default = false"])
    assert "slow tests deselected" not in heavy_pytester.runpytest(*args, "--heavy-run-slow").stdout.str()


# --- examples: skip policy, cause chain, ids ---------------------------------------------------------

EXAMPLES = {
    "plugin_missing.py": "# pytest:\nraise ImportError('requires the X plugin framework')\n",
    "other_import_error.py": "# pytest:\nraise ImportError('cannot import name Y from z')\n",
    "wrapped_extra.py": """
        # pytest:
        try:
            import nosuch_extra_mod
        except ImportError as e:
            raise ImportError("install the [extra] extra: pip install pkg[extra]") from e
    """,
    "context_extra.py": """
        # pytest:
        try:
            import nosuch_extra_mod.sub
        except ImportError:
            raise RuntimeError("extras missing") if False else ImportError("extras missing")
    """,
    "exits_3.py": "# pytest:\nimport sys\nprint('no server here', file=sys.stderr)\nsys.exit(3)\n",
    "fine.py": "# pytest:\nprint('ok')\n",
}


def _examples(pytester: pytest.Pytester, extra: str) -> pytest.RunResult:
    pytester.makeini(f"[pytest]\nheavy_ram_gib = 4\nheavy_optional_modules = nosuch_extra_mod\n{extra}\n")
    for name, text in EXAMPLES.items():
        write(pytester, f"docs/examples/{name}", text)
    return pytester.runpytest("-v", "-rs", "docs/examples")


def test_by_default_only_an_optional_module_skips_following_the_import_error_chain(
        heavy_pytester: pytest.Pytester) -> None:
    result = _examples(heavy_pytester, "")
    assert outcomes(result) == {
        "docs/examples/context_extra.py::example": "SKIPPED",
        "docs/examples/exits_3.py::example": "FAILED",
        "docs/examples/fine.py::example": "PASSED",
        "docs/examples/other_import_error.py::example": "FAILED",
        "docs/examples/plugin_missing.py::example": "FAILED",
        "docs/examples/wrapped_extra.py::example": "SKIPPED",
    }
    assert skip_reasons(result) == ["optional dependency nosuch_extra_mod not installed"] * 2


def test_the_examples_skip_policy_names_exceptions_messages_and_exit_codes(
        heavy_pytester: pytest.Pytester) -> None:
    result = _examples(heavy_pytester, "heavy_examples_skip_on =\n    ImportError: requires the .* plugin\n"
                                       "    exit=3\n")
    assert outcomes(result) == {
        "docs/examples/context_extra.py::example": "SKIPPED",
        "docs/examples/exits_3.py::example": "SKIPPED",
        "docs/examples/fine.py::example": "PASSED",
        "docs/examples/other_import_error.py::example": "FAILED",
        "docs/examples/plugin_missing.py::example": "SKIPPED",
        "docs/examples/wrapped_extra.py::example": "SKIPPED",
    }
    assert sorted(skip_reasons(result)) == [
        "ImportError: requires the X plugin framework "
        "(heavy_examples_skip_on: ImportError: requires the .* plugin)",
        "no server here (exit 3: heavy_examples_skip_on)",
        "optional dependency nosuch_extra_mod not installed",
        "optional dependency nosuch_extra_mod not installed",
    ]
    result = _examples(heavy_pytester, "heavy_examples_skip_on = ImportError")
    assert outcomes(result)["docs/examples/other_import_error.py::example"] == "SKIPPED"
    assert outcomes(result)["docs/examples/exits_3.py::example"] == "FAILED"


def test_a_bad_skip_rule_is_a_usage_error(heavy_pytester: pytest.Pytester) -> None:
    heavy_pytester.makeini("[pytest]\nheavy_examples_skip_on = ImportError: (unclosed\n")
    result = heavy_pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ini heavy_examples_skip_on line 'ImportError: (unclosed': bad pattern*"])


@pytest.mark.parametrize(("style", "name"), [("", "example"), ("heavy_example_ids = file", "fine.py"),
                                             ("heavy_example_ids = example", "example")])
def test_the_example_id_style_is_configurable(heavy_pytester: pytest.Pytester, style: str, name: str) -> None:
    heavy_pytester.makeini(f"[pytest]\nheavy_ram_gib = 4\n{style}\n")
    write(heavy_pytester, "docs/examples/fine.py", EXAMPLES["fine.py"])
    result = heavy_pytester.runpytest("-v", f"--deselect=docs/examples/fine.py::{name}", "docs/examples")
    result.assert_outcomes(deselected=1)
    result = heavy_pytester.runpytest("-v", f"docs/examples/fine.py::{name}")
    assert outcomes(result) == {f"docs/examples/fine.py::{name}": "PASSED"}


# --- doctor: amounts and marker clashes --------------------------------------------------------------


def test_doctor_names_markers_the_project_registers_with_its_own_meaning(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\nheavy_enabled = true\nmarkers =\n"
                     "    vllm: backend tests through a vLLM server\n    slow: long\n    unrelated: fine\n")
    assumed = ["--heavy-assume", "gpus=1x80GiB,ram=64GiB"]
    command = [sys.executable, "-m", "pytest_heavy.cli", "doctor", *assumed]
    out = subprocess.run(command, cwd=pytester.path, capture_output=True, text=True, check=True).stdout
    assert "amounts here: requires_gpu(count<=1), requires_vram(gib<=80), requires_heavy_ram(gib<=64)" in out
    lines = [line.strip() for line in out.splitlines()]
    start = lines.index("markers the project registers itself, which pytest-heavy gives a meaning by "
                        "default:")
    vllm = "vllm (registered: 'backend tests through a vLLM server')"
    unless = "if that is not its meaning here, set:"
    assert lines[start + 1:start + 5] == [
        f"slow (registered: 'long') is deselected by default; {unless} heavy_skip_slow_by_default = false",
        f"{vllm} implies a GPU (gated, routed); {unless} heavy_gpu_markers = requires_gpu huggingface",
        f"{vllm} isolates its module in a child process; {unless} heavy_isolate_markers = requires_heavy_ram "
        "requires_gpu_isolation",
        f"{vllm} needs the vllm package importable here; {unless} heavy_marker_packages =",
    ]
    assert "unrelated" not in out.split("markers here:")[0]
    pytester.makeini("[pytest]\nheavy_gpu_markers = requires_gpu\nheavy_marker_packages =\n"
                     "markers =\n    vllm: backend tests through a vLLM server\n")
    command = [sys.executable, "-m", "pytest_heavy.cli", "doctor", "--json", *assumed]
    out = subprocess.run(command, cwd=pytester.path, capture_output=True, text=True, check=True).stdout
    doc = json.loads(out)
    assert [(c["marker"], c["key"]) for c in doc["clashes"]] == [("vllm", "heavy_isolate_markers")]
    assert doc["markers"]["vllm"]["runs"] and not doc["markers"]["vllm"]["gpu"]


# --- Apple silicon ------------------------------------------------------------------------------------

APPLE = """
import pytest

@pytest.mark.requires_gpu
def test_one_gpu(): pass

@pytest.mark.huggingface
def test_hf(): pass

@pytest.mark.requires_gpu(count=2)
def test_two_gpus(): pass

@pytest.mark.requires_vram(8)
def test_vram(): pass
"""


@pytest.mark.parametrize(("ini", "runs"), [("", set()), ("heavy_apple_mps_is_gpu = true", {"test_one_gpu",
                                                                                           "test_hf"})])
def test_apple_mps_counts_as_a_gpu_only_where_the_project_says_so(heavy_pytester: pytest.Pytester, ini: str,
                                                                  runs: set[str]) -> None:
    heavy_pytester.makeini(f"[pytest]\nheavy_ram_gib = 4\nheavy_gpu_markers = huggingface\n{ini}\n")
    heavy_pytester.makepyfile(test_apple=APPLE)
    result = heavy_pytester.runpytest("-v", "-rs", "--heavy-assume", "gpus=0,apple_mps=on,ram=16GiB")
    got = outcomes(result)
    assert {nodeid.split("::")[1] for nodeid, outcome in got.items() if outcome == "PASSED"} == runs
    result.stdout.fnmatch_lines(["heavy: no GPU (--heavy-assume gpus=0); MPS off, Apple MPS;*"])
    if not runs:
        assert "Apple MPS is present, but GPU markers ask for CUDA GPUs" in skip_reasons(result)[0]


def test_the_assume_parser_knows_apple_mps() -> None:
    hw = assume.apply_assume(Hardware(), assume.parse_assume("apple_mps=on"))
    assert hw.apple_mps and hw.assumed == ("apple_mps",)
    with pytest.raises(assume.AssumeError, match="apple_mps: expected on or off"):
        assume.parse_assume("apple_mps=maybe")


# --- the house: public types, frozen settings ----------------------------------------------------------


def test_the_public_types_import_from_the_package_without_loading_it_eagerly() -> None:
    code = ("import sys, pytest_heavy as p\n"
            "print(sorted(m for m in sys.modules if m.startswith('pytest_heavy.')))\n"
            "print(sorted(n for n in p.__all__ if getattr(p, n).__name__ == n))\nprint(p.__all__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    lines = out.splitlines()
    assert lines[0] == "[]"
    exported = eval(lines[2])
    assert lines[1] == str(sorted(exported))  # every exported name resolves to its type
    assert {"HeavyRecord", "Launcher", "Needs", "Settings", "Hardware", "Job", "Placement"} <= set(exported)


def test_find_leaks_is_read_into_the_frozen_settings(heavy_pytester: pytest.Pytester) -> None:
    heavy_pytester.makeconftest("""
        from pytest_heavy.state import RUN
        SEEN = []
        def pytest_configure(config):
            SEEN.append(config.stash[RUN].settings)
        def pytest_sessionfinish(session):
            settings = session.config.stash[RUN].settings
            assert settings is SEEN[0], "settings replaced after configure"
            print(f"\\nsettings: isolate={settings.isolate} find_leaks={settings.find_leaks}")
    """)
    heavy_pytester.makepyfile(test_x="def test_x(): pass\n")
    result = heavy_pytester.runpytest("-s", "--heavy-find-leaks", "--heavy-isolate=always")
    result.stdout.fnmatch_lines(["settings: isolate=never find_leaks=True"])
    assert result.ret == 0


# --- docs/migrating.md: its commands run, and keep every outcome -------------------------------------

REPO = Path(__file__).resolve().parent.parent
MIGRATING = REPO / "docs" / "migrating.md"


def doc_commands(marker: str) -> list[str]:
    """The ``$ `` lines of the console block that follows ``<!-- marker -->`` in docs/migrating.md."""
    text = MIGRATING.read_text()
    block = text[text.index(f"<!-- {marker} -->"):].split("```console\n", 1)[1].split("```", 1)[0]
    return [line[2:] for line in block.splitlines() if line.startswith("$ ")]


def run_doc_command(line: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A documented command as a shell would run it: leading VAR=value words, then pytest or pytest-heavy
    from this interpreter."""
    words = line.split()
    env = dict(env)
    while "=" in words[0]:
        key, _, value = words.pop(0).partition("=")
        env[key] = value
    program = {"pytest": [sys.executable, "-m", "pytest"],
               "pytest-heavy": [sys.executable, "-m", "pytest_heavy.cli"]}
    return subprocess.run([*program[words[0]], *words[1:]], cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture
def migration(pytester: pytest.Pytester) -> tuple[Path, Path, dict[str, str]]:
    """Copies of both sides, and an environment in which neither sees a GPU: the hand-written side asks
    nvidia-smi (a stand-in that lists none comes first on PATH), pytest-heavy is told gpus=0."""
    root = pytester.path
    for side in ("before", "after"):
        shutil.copytree(REPO / "docs" / "migrating" / side, root / side)
    bin_dir = root / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text("#!/bin/sh\nexit 0\n")  # lists no GPU
    smi.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("CICD", "PYTEST_ADDOPTS", "RUN_SLOW")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["PYTEST_HEAVY_ASSUME"] = "gpus=0"
    env["PYTEST_ADDOPTS"] = "-p no:randomly -p no:cacheprovider"
    return root / "before", root / "after", env


def test_the_migration_keeps_every_outcome_and_its_commands_run(
        migration: tuple[Path, Path, dict[str, str]]) -> None:
    before, after, env = migration
    commands = doc_commands("same outcomes before and after")
    assert len(commands) >= 4
    for line in commands:
        ran = {}
        for side in (before, after):
            proc = run_doc_command(f"{line} -vv", side, env)
            assert proc.returncode == 0, f"{side.name}: {line}\n{proc.stdout}\n{proc.stderr}"
            got = {m.group(1): m.group(2) for out in proc.stdout.splitlines()
                   if (m := re.match(r"(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR)", out))}
            ran[side.name] = (got, proc.stdout)
        assert ran["before"][0] == ran["after"][0], line
        assert len(ran["after"][0]) >= 9, line
    out = ran["after"][1]  # the last command, in after/: the ImportError example skipped with a reason
    assert ("SKIPPED [1] docs/examples/needs_plugin.py:1: ImportError: requires the X plugin framework "
            "(heavy_examples_skip_on: ImportError)") in out
    for line in doc_commands("after only"):
        proc = run_doc_command(line, after, env)
        assert proc.returncode == 0, proc.stderr
        assert "registers itself" not in proc.stdout  # the configuration resolved every clash
        assert "require_gpu              skipped: needs a GPU (require_gpu)" in proc.stdout
