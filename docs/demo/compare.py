"""Run the demo suite in one process and isolated, and print each module's peak RSS side by side.

Why: in one process every heavy module's model stays in the library's cache, so the peak grows with every
module (the out-of-memory path of real suites); isolated, each heavy module's child peaks at one model and
gives it back when it exits. ``make demo-compare`` runs this; extra arguments go to both pytest runs.

This file is also the small pytest plugin (``-p compare``) loaded into the in-process run: after every test
it records the process's peak RSS so far under the test's module, the in-process counterpart of the
per-module peaks that ``--heavy-report`` gives for isolated modules.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

DEMO = Path(__file__).resolve().parent
PEAKS_ENV = "DEMO_COMPARE_PEAKS"  # where the plugin writes {module: peak MiB}
SAMPLE_S = 0.05

# --- the plugin half: loaded with -p compare into the in-process run --------------------------------

_module_peaks: dict[str, float] = {}


def _maxrss_mib() -> float:
    """This process's peak RSS so far (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def pytest_runtest_teardown(item: pytest.Item) -> None:
    # Examples run in a subprocess of their own in both runs: only test functions show this process's peak.
    if isinstance(item, pytest.Function):
        _module_peaks[item.nodeid.split("::")[0]] = _maxrss_mib()


def pytest_sessionfinish() -> None:
    path = os.environ.get(PEAKS_ENV)
    if path:
        Path(path).write_text(json.dumps(_module_peaks))


# --- the driver half ----------------------------------------------------------------------------------


@dataclass
class Run:
    """One pytest run: its exit status, wall time and the sampled peak RSS of its whole process tree."""

    returncode: int = -1
    wall_s: float = 0.0
    tree_peak_mib: float = 0.0
    module_peaks: dict[str, float | None] = field(default_factory=dict)


def tree_rss_mib(proc: psutil.Process) -> float:
    """RSS of ``proc`` and all its descendants, skipping any that exit while being read."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return total / (1 << 20)


def run_pytest(args: list[str], env: dict[str, str]) -> Run:
    """Run pytest on the demo with the terminal attached, sampling its process tree's RSS meanwhile."""
    run = Run()
    start = time.perf_counter()
    popen = subprocess.Popen([sys.executable, "-m", "pytest", *args], cwd=DEMO, env=env)
    proc = psutil.Process(popen.pid)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                run.tree_peak_mib = max(run.tree_peak_mib, tree_rss_mib(proc))
            except psutil.NoSuchProcess:
                return
            done.wait(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        run.returncode = popen.wait()
    finally:
        done.set()
        sampler.join()
    run.wall_s = time.perf_counter() - start
    return run


def read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def report_peaks(data: object) -> dict[str, float | None]:
    """``{module: peak_rss_mib}`` from a ``--heavy-report`` document, tolerating missing keys.

    A row names its module under ``unit`` (``module`` is accepted too). Rows without a name are skipped,
    and so are rows of kind ``example``: an example runs in a subprocess of its own in both runs.
    """
    rows = data.get("modules") if isinstance(data, dict) else None
    peaks: dict[str, float | None] = {}
    for row in rows if isinstance(rows, list) else []:
        if not isinstance(row, dict) or row.get("kind", "module") != "module":
            continue
        name = row.get("unit") or row.get("module")
        if isinstance(name, str):
            peak = row.get("peak_rss_mib")
            peaks[name] = float(peak) if isinstance(peak, (int, float)) else None
    return peaks


def same_module(a: str, b: str) -> bool:
    """Node-id paths match when one ends with the other (the report may name them from another root)."""
    return a == b or a.endswith("/" + b) or b.endswith("/" + a)


def table(in_process: Run, isolated: Run) -> list[str]:
    modules = list(in_process.module_peaks)
    modules += [m for m in isolated.module_peaks if not any(same_module(m, k) for k in modules)]

    def isolated_cell(module: str) -> str:
        for name, peak in isolated.module_peaks.items():
            if same_module(module, name):
                return "?" if peak is None else f"{peak:,.0f}"
        return "(in parent)"

    def in_process_cell(module: str) -> str:
        peak = in_process.module_peaks.get(module)
        return "(subprocess)" if peak is None else f"{peak:,.0f}"

    width = max([len(m) for m in modules] + [28])
    rows = [
        f"{'peak RSS, MiB':<{width}}  {'one process':>12}  {'isolated':>10}",
        f"{'':<{width}}  {'(never)':>12}  {'(always)':>10}",
    ]
    rows += [f"{m:<{width}}  {in_process_cell(m):>12}  {isolated_cell(m):>10}" for m in modules]
    rows.append(f"{'whole process tree (sampled)':<{width}}  {in_process.tree_peak_mib:>12,.0f}  "
                f"{isolated.tree_peak_mib:>10,.0f}")
    rows.append(f"{'wall time, s':<{width}}  {in_process.wall_s:>12.1f}  {isolated.wall_s:>10.1f}")
    rows.append(f"{'exit status':<{width}}  {in_process.returncode:>12}  {isolated.returncode:>10}")
    rows += ["", "one process: the pytest process's peak so far when the module's last test finished;",
             "isolated: the peak of the module's own child process tree (from --heavy-report)."]
    return rows


def main(extra: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="demo-compare-") as tmp:
        peaks_path, report_path = Path(tmp) / "peaks.json", Path(tmp) / "heavy-report.json"
        env = {**os.environ, PEAKS_ENV: str(peaks_path),
               "PYTHONPATH": os.pathsep.join(filter(None, [str(DEMO), os.environ.get("PYTHONPATH")]))}
        print("=== the demo suite in one process (--heavy-isolate never) ===", flush=True)
        in_process = run_pytest(["-p", "compare", "--heavy-isolate", "never", *extra], env)
        recorded = read_json(peaks_path)
        in_process.module_peaks = recorded if isinstance(recorded, dict) else {}
        print("\n=== the demo suite isolated (--heavy-isolate always) ===", flush=True)
        isolated = run_pytest(["--heavy-isolate", "always", "--heavy-report", str(report_path), *extra], env)
        report = read_json(report_path)
        isolated.module_peaks = report_peaks(report)
    print("\n=== peaks side by side ===")
    print("\n".join(table(in_process, isolated)))
    if report is None:
        print(f"\nno readable --heavy-report was written ({report_path.name}): the isolated column is empty; "
              "is the isolation engine installed?")
        return 1
    return max(in_process.returncode, isolated.returncode)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
