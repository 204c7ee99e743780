"""Figure 2, probe cost: ``pytest_heavy.hardware.probe()`` alone, and what a session start imports.

The probe runs once per session in every pytest process, so it is part of the idle cost; the plugin
must never import torch (seconds of import, and a CUDA check that poisons later forks), which
``python -X importtime`` of a session start and ``sys.modules`` at the end of a session both show.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

import suites
from harness import (
    PY,
    Figure,
    RunFailed,
    Verdict,
    clean_env,
    log,
    median,
    ms,
    pytest_argv,
    run_once,
    scratch,
    spread,
    table,
)

TARGET_S = 0.020
HEAVY_LIBS = ("torch", "transformers", "vllm", "pynvml")

# Timed in a fresh interpreter. "session": pytest and the plugin are imported first, as they are when
# pytest_configure probes, and the plugin's own import is timed too; "bare": nothing else is imported,
# so the first probe also pays for psutil, pathlib and the other modules a session already has.
PROBE_SCRIPT = """\
import json, sys, time
t0 = time.perf_counter()
if sys.argv[1] == "session":
    import pytest
    t0 = time.perf_counter()
    import pytest_heavy.plugin
t1 = time.perf_counter()
from pytest_heavy import hardware
t2 = time.perf_counter()
hw = hardware.probe()
t3 = time.perf_counter()
hardware.probe()
t4 = time.perf_counter()
print(json.dumps({"plugin": t1 - t0, "import": t2 - t1, "first": t3 - t2, "again": t4 - t3,
                  "gpus": len(hw.gpus), "reason": hw.gpu_reason,
                  "heavy": sorted(m for m in sys.modules if m.split(".")[0] in %r)}))
"""


# Loaded with -p: at the end of the session, which heavy libraries the pytest parent has imported.
SYS_MODULES_PLUGIN = """\
import json, os, sys


def pytest_sessionfinish(session):
    libs = %r
    with open(os.environ["BENCH_SYS_MODULES"], "w") as fh:
        json.dump(sorted(m for m in sys.modules if m.split(".")[0] in libs), fh)
"""


def probe_once(mode: str, cwd: Path) -> dict:
    proc = subprocess.run([PY, "-c", PROBE_SCRIPT % (HEAVY_LIBS,), mode], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    if proc.returncode:
        raise RunFailed(f"probe script exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


@dataclass(frozen=True)
class Import:
    name: str
    self_us: int
    cumulative_us: int
    level: int


def parse_importtime(stderr: str) -> list[Import]:
    found = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:"):].split("|")
        found.append(Import(name.strip(), int(self_us), int(cumulative_us),
                            (len(name) - len(name.lstrip()) - 1) // 2))
    return found


def plugin_imports(imports: list[Import]) -> tuple[list[Import], float]:
    """The imports the plugin's modules made (theirs and what they pulled in), and their total seconds.

    pytest imports the plugin through ``importlib.import_module``, which importtime does not report, so
    the plugin's own modules appear as top-level lines; importtime prints children before their parent.
    """
    found: list[Import] = []
    total = 0
    for i, imp in enumerate(imports):
        if imp.level == 0 and imp.name.startswith("pytest_heavy"):
            j = i
            while j > 0 and imports[j - 1].level > 0:
                j -= 1
            found += imports[j:i + 1]
            total += imp.cumulative_us
    return found, total / 1e6


def session_imports(root: Path) -> tuple[list[Import], list[str]]:
    """importtime of a --collect-only session start, and sys.modules after a full isolated run."""
    proc = subprocess.run([PY, "-X", "importtime", "-m", "pytest", "-q", "--collect-only"], cwd=root,
                          env=clean_env(), capture_output=True, text=True, timeout=300)
    if proc.returncode:
        raise RunFailed(f"importtime session exited {proc.returncode}:\n{proc.stdout[-3000:]}")
    (root / "bench_sys_modules.py").write_text(SYS_MODULES_PLUGIN % (HEAVY_LIBS,))
    out = root / "sys_modules.json"
    isolated = pytest_argv("-q", "-p", "bench_sys_modules", "--heavy-isolate", "always",
                           "--heavy-start", "spawn")
    run_once(isolated, root, clean_env(BENCH_SYS_MODULES=str(out), PYTHONPATH=str(root)))
    return parse_importtime(proc.stderr), json.loads(out.read_text())


def run(quick: bool) -> Figure:
    reps = 3 if quick else 9
    with scratch("probe") as root:
        suites.heavy_suite(root, modules=2, tests=2)
        (root / "test_plain.py").write_text("def test_plain():\n    assert True\n")
        samples: dict[str, list[dict]] = {"session": [], "bare": []}
        for _ in range(reps):
            for mode, found in samples.items():
                found.append(probe_once(mode, root))
        log("probe: probes timed")
        imports, parent_modules = session_imports(root)
    session, bare = samples["session"], samples["bare"]

    def col(rows: list[dict], key: str) -> str:
        return spread([r[key] for r in rows], ms)

    first = median([s["first"] for s in session])
    rows = [
        ["`import pytest_heavy.plugin` after `import pytest`", col(session, "plugin")],
        ["first `probe()` in a session (pytest and the plugin imported, as at `pytest_configure`)",
         col(session, "first")],
        ["first `probe()` in a bare interpreter (also imports psutil, pathlib...)", col(bare, "first")],
        ["second `probe()`", col(session, "again")],
    ]
    libs_in_probe = sorted({m.split(".")[0] for s in session + bare for m in s["heavy"]})
    at_start = sorted({i.name.split(".")[0] for i in imports if i.name.split(".")[0] in HEAVY_LIBS})
    plugin, plugin_s = plugin_imports(imports)
    heaviest = sorted(plugin, key=lambda i: -i.self_us)[:8]
    session_s = sum(i.self_us for i in imports) / 1e6
    none = "none of " + ", ".join(HEAVY_LIBS)
    verdicts = [
        Verdict(f"probe() at most {ms(TARGET_S)} without GPUs",
                f"{ms(first)} in a session ({ms(median([s['first'] for s in bare]))} in a bare interpreter)",
                first <= TARGET_S),
        Verdict("a session start never imports torch",
                f"start: {', '.join(at_start) or 'no torch'}; parent after an isolated run: "
                f"{', '.join(parent_modules) or 'no torch'}",
                not at_start and not any(m.split(".")[0] == "torch" for m in parent_modules)),
    ]
    body = (
        f"`hardware.probe()` timed in {reps} fresh interpreters per row ({bare[0]['gpus']} GPUs seen"
        f"{': ' + bare[0]['reason'] if bare[0]['reason'] else ''}). Heavy libraries imported by the probe: "
        f"{', '.join(libs_in_probe) or none}.\n\n"
        + table(["measure", "median [min–max]"], rows)
        + f"\nTarget: the first probe of a session at most {ms(TARGET_S)} without GPUs.\n\n"
        "## What a session start imports\n\n"
        f"`python -X importtime -m pytest -q --collect-only` on a small suite: {len(imports)} modules, "
        f"{session_s:.2f} s of import time in all, of which the plugin's modules and what they import: "
        f"{plugin_s * 1000:.0f} ms ({len(plugin)} modules). Heavy libraries imported at start: "
        f"{', '.join(at_start) or none}. After a full run of the same suite with its two heavy modules "
        f"isolated (spawn), the parent's `sys.modules` holds: {', '.join(parent_modules) or none}.\n\n"
        "The plugin's largest imports by self time (one `-X importtime` run, so indicative only):\n\n"
        + table(["module", "self", "cumulative"],
                [[f"`{i.name}`", f"{i.self_us / 1000:.1f} ms", f"{i.cumulative_us / 1000:.1f} ms"]
                 for i in heaviest])
    )
    return Figure("probe", "Probe cost and session-start imports", body, verdicts, reps)
