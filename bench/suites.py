"""Generated test suites, each in its own directory with its own pytest.ini.

The ini file makes the directory the rootdir, so this repository's pyproject settings never apply to a
benchmark run. Heavy modules carry ``pytestmark = pytest.mark.requires_gpu_isolation``, one of the
default ``heavy_isolate_markers``; the marker is also declared in the ini so a ``-p no:heavy`` run
(the baseline) collects the same modules without unknown-marker warnings.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

HEAVY_MARKER = "requires_gpu_isolation"
RAM_MARKER = "requires_heavy_ram"
# The ini lines of a suite whose heavy modules are marked ``requires_heavy_ram``: its amount (small, so
# no test is gated on this machine) is also what opts the project in, with nothing else configured.
RAM_INI = (f"    {RAM_MARKER}: heavy module", "heavy_ram_gib = 1")


def write_ini(root: Path, *lines: str) -> None:
    body = "\n".join(["[pytest]", "markers =", f"    {HEAVY_MARKER}: heavy module (pytest-heavy)",
                      "    unit: an ordinary marker", *lines])
    root.mkdir(parents=True, exist_ok=True)
    (root / "pytest.ini").write_text(body + "\n")


def idle_suite(root: Path, modules: int = 20, per_module: int = 100) -> int:
    """``modules`` x ``per_module`` ordinary tests (no heavy marker): parametrized, fixtures, classes.

    The mix resembles a unit-test suite: a third parametrized, a third using a fixture, a third methods
    of a class, some with an ordinary marker, so the plugin's per-item hooks see realistic items.
    """
    write_ini(root)
    third = per_module // 3
    rest = per_module - 2 * third
    for m in range(modules):
        fixtures = "\n".join(f"def test_fixture_{i}(value):\n    assert value * {i} == 3 * {i}\n"
                             for i in range(third))
        methods = "\n".join(f"    @pytest.mark.unit\n    def test_method_{i}(self):\n"
                            f"        assert {i} + 1 > {i}\n" for i in range(rest))
        (root / f"test_idle_{m:03d}.py").write_text(
            "import pytest\n\n\n@pytest.fixture\ndef value():\n    return 3\n\n\n"
            f"@pytest.mark.parametrize('n', range({third}))\ndef test_param(n):\n    assert n + 0 == n\n\n\n"
            f"{fixtures}\n\nclass TestGroup:\n{methods}"
        )
    return modules * per_module


def heavy_suite(root: Path, modules: int, tests: int = 4, torch: bool = False,
                weights: bool = False, marker: str = HEAVY_MARKER) -> list[str]:
    """``modules`` heavy modules of ``tests`` parametrized tests each; returns their file names.

    With ``torch`` every module imports torch at module level and each test runs a small torch op,
    as a HuggingFace suite does (nothing names torch to pytest-heavy: the template finds it).
    ``weights`` adds ``W = torch.ones(256, 256)`` at import: big enough for torch to start its OpenMP
    pool while the parent collects, after which the parent cannot fork safely. ``marker``: the heavy
    modules' marker; ``RAM_MARKER`` opts the project in through its ini (``RAM_INI``), as a project
    that uses it does, where the default marker leaves that to the command line.
    """
    write_ini(root, *(RAM_INI if marker == RAM_MARKER else ()))
    header = "import pytest\n" + ("import torch\n" if torch else "")
    header += "W = torch.ones(256, 256)\n" if weights else ""
    body = "assert torch.ones(8).add(x).sum().item() == 8 * (1 + x)" if torch else "assert x >= 0"
    names = []
    for m in range(modules):
        name = f"test_heavy_{m:03d}.py"
        (root / name).write_text(
            f"{header}\npytestmark = pytest.mark.{marker}\n\n\n"
            f"@pytest.mark.parametrize('x', range({tests}))\ndef test_case(x):\n    {body}\n"
        )
        names.append(name)
    return names


def big_suite(root: Path, modules: int = 2, tests: int = 5000) -> list[str]:
    """``modules`` heavy modules (``requires_heavy_ram``, ``heavy_ram_gib = 1``) of ``tests`` parametrized
    tests each, no torch: what isolation costs per test when a module has thousands (issue #21)."""
    write_ini(root, *RAM_INI)
    names = []
    for m in range(modules):
        name = f"test_big_{m:03d}.py"
        (root / name).write_text(
            f"import pytest\n\npytestmark = pytest.mark.{RAM_MARKER}\n\n\n"
            f"@pytest.mark.parametrize('i', range({tests}))\ndef test_x(i):\n    assert i >= 0\n"
        )
        names.append(name)
    return names


def cpu_bound_suite(root: Path, modules: int, cpu_s: float, tests: int = 1) -> list[str]:
    """Heavy modules of ``tests`` tests (default 1), each burning ``cpu_s`` seconds of its own CPU time.

    Burning a fixed amount of process CPU time (not of wall time) keeps the work per module the same
    however busy the machine is, so 1 and 2 workers do identical work.
    """
    body = textwrap.dedent(f"""\
        import time

        import pytest

        pytestmark = pytest.mark.{HEAVY_MARKER}


        @pytest.mark.parametrize("i", range({tests}))
        def test_burn(i):
            end = time.process_time() + {cpu_s}
            n = 0
            while time.process_time() < end:
                n += sum(range(1000))
            assert n > 0
        """)
    write_ini(root)
    names = []
    for m in range(modules):
        name = f"test_cpu_{m:03d}.py"
        (root / name).write_text(body)
        names.append(name)
    return names


EXAMPLE = """\
# Summarize a small generated table (a stand-in for a short documentation example).
# pytest:
import json
import statistics

rows = [{{"id": i, "score": (i * 37) % 101 / 100}} for i in range(2000)]
print(json.dumps({{"example": {index}, "mean": statistics.fmean(r["score"] for r in rows)}}))
"""


def examples_dir(root: Path, count: int, dirname: str = "examples") -> list[str]:
    """A docs/examples-style directory of ``count`` scripts with a ``# pytest:`` header; paths from root."""
    write_ini(root, f"heavy_examples_dirs = {dirname}")
    (root / dirname).mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        path = root / dirname / f"example_{i:03d}.py"
        path.write_text(EXAMPLE.format(index=i))
        names.append(str(path.relative_to(root)))
    return names


def ci_suite(root: Path, modules: int = 300, per_module: int = 10, heavy_modules: int = 5,
             library_objects: int = 300_000) -> int:
    """A real ML library's CI run in miniature: every test module imports a large library (``biglib``,
    about ``4 x library_objects`` Python objects at import, as transformers and a project's own ~300
    modules make), ``modules`` x ``per_module`` tests, and ``heavy_modules`` of them marked heavy.

    The heap size is what makes a full ``gc.collect()`` cost what it costs on a real suite (80 ms and
    more); the heavy modules are what CI-mode cleanup and isolation are for.
    """
    write_ini(root, *RAM_INI)
    (root / "biglib.py").write_text(
        f"TABLE = [{{'id': i, 'tags': [i, str(i)]}} for i in range({library_objects})]\n"
        "REGISTRY = {row['id']: row for row in TABLE}\n"
    )
    for m in range(modules):
        mark = f"pytestmark = pytest.mark.{RAM_MARKER}\n" if m < heavy_modules else ""
        tests = "\n".join(f"def test_{i}():\n    assert biglib.REGISTRY[{i}]['tags'][0] == {i}\n"
                          for i in range(per_module))
        (root / f"test_ci_{m:03d}.py").write_text(f"import pytest\n\nimport biglib\n\n{mark}\n{tests}")
    return modules * per_module
