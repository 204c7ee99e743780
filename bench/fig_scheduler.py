"""Figure 8, the GPU-aware parallel heavy tier: ``--heavy-workers auto`` against one module at a time.

Eight heavy modules whose recorded peaks (GPU memory per module, RSS, wall time) sit in the committed
peaks file; each module's test only sleeps for its recorded wall time, so what is measured is the
scheduling itself: the packing decisions, the children's start and end, and the waits between them.
The machine is assumed (``--heavy-assume``): 2 and 4 GPUs of 80 GiB in DEFAULT compute mode, and a
CPU-only case in which ``requires_heavy_ram`` modules of known RSS share 24 GiB of RAM. For each case
``pytest-heavy doctor --plan`` gives the makespan the plan predicts from the same records: measured
minus predicted is the overhead of running it for real. The GPU-machine counterpart (real allocations
on a real GPU) belongs in gpu.md.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import suites
from harness import (
    NOISE_NOTE,
    PY,
    Figure,
    Variant,
    Verdict,
    clean_env,
    measure,
    median,
    paired,
    pytest_argv,
    ratio,
    report_check,
    scratch,
    secs,
    spread,
    table,
)

GIB = 1024
# (recorded wall time in seconds, GPU peak in GiB, RSS peak in GiB) of the eight modules
MODULES = [(8, 30, 6), (6, 20, 6), (5, 45, 6), (4, 10, 6), (3, 60, 6), (3, 15, 6), (2, 25, 6), (1, 5, 6)]
CASES = [  # (label, --heavy-assume, marker)
    ("2 GPUs x 80 GiB", "gpus=2x80GiB,ram=64GiB", "requires_gpu"),
    ("4 GPUs x 80 GiB", "gpus=4x80GiB,ram=64GiB", "requires_gpu"),
    ("no GPU, 24 GiB RAM, requires_heavy_ram", "gpus=0,ram=24GiB,cpus=8", "requires_heavy_ram"),
]


def write_suite(root: Path, marker: str, scale: float) -> None:
    suites.write_ini(root, "heavy_ram_gib = 4", "heavy_durations_path = durations.json")
    peaks = {}
    for m, (wall, gpu, rss) in enumerate(MODULES):
        name = f"test_model_{m}.py"
        marks = f"[pytest.mark.{suites.HEAVY_MARKER}, pytest.mark.{marker}]"
        (root / name).write_text(f"import time\n\nimport pytest\n\npytestmark = {marks}\n\n\n"
                                 f"def test_load_and_run():\n    time.sleep({wall * scale})\n")
        peaks[name] = {"wall_s": wall * scale, "rss_mib": rss * GIB,
                       "gpu_mib": [gpu * GIB] if marker == "requires_gpu" else None}
    (root / "durations.json.peaks.json").write_text(json.dumps(peaks, indent=2))


def exit_0_first(record: dict) -> bool:
    """The module's child exited 0, whatever note the exit column adds after it."""
    return record["exit"].startswith("exit 0")


def packing(records: list[dict]) -> str:
    """The most modules that shared one GPU at once (``-`` without GPUs)."""
    if not records[0]["gpus"]:
        return "-"
    return f"most modules met on one GPU: {max(len(r['beside']) for r in records) + 1}"


def predicted(root: Path, assume: str) -> float:
    out = subprocess.run(
        [PY, "-m", "pytest_heavy.cli", "doctor", "--plan", "--json", "--heavy-assume", assume], cwd=root,
        env=clean_env(), capture_output=True, text=True, timeout=120, check=True).stdout
    return float(json.loads(out)["makespan_s"])


def run(quick: bool) -> Figure:
    reps, scale = (1, 0.1) if quick else (3, 1.0)
    rows, verdicts = [], []
    serial_s = sum(w for w, _, _ in MODULES) * scale
    with scratch("scheduler") as tmp:
        for label, assume, marker in CASES:
            root = tmp / marker / assume.replace(",", "_").replace("=", "-")
            write_suite(root, marker, scale)
            plan_s = predicted(root, assume)
            variants = []
            for workers in ("1", "auto"):
                report = root / f"report-{workers}.json"
                cmd = pytest_argv("-q", "-p", "no:cacheprovider", "--heavy-isolate", "always",
                                  "--heavy-workers", workers, "--heavy-assume", assume,
                                  "--heavy-report", str(report))
                variants.append(Variant(f"{label}: `--heavy-workers {workers}`", [cmd], root,
                                        check=report_check(report, len(MODULES), passed=exit_0_first,
                                                           note=packing)))
            measure(variants, reps, progress=f"scheduler {label}")
            one, auto = variants
            speedup = paired(one.walls(), auto.walls())
            rows.append([label, spread(one.walls(), secs), spread(auto.walls(), secs), secs(plan_s),
                         spread(speedup, ratio), "; ".join(sorted(auto.notes))])
            measured = f"{ratio(median(speedup))} faster (plan: {ratio(serial_s / plan_s)})"
            target = f"8 modules, {label}: auto vs one at a time (report only)"
            verdicts.append(Verdict(target, measured, None))
    body = (
        f"Eight heavy modules sleeping {', '.join(f'{w * scale:g}' for w, _, _ in MODULES)} s "
        f"({serial_s:g} s one after another), recorded GPU peaks "
        f"{', '.join(str(g) for _, g, _ in MODULES)} GiB and RSS peaks of 6 GiB each; "
        "`--heavy-isolate always`, start method auto.\n\n"
        + table(["machine (assumed)", "`--heavy-workers 1`", "`--heavy-workers auto`",
                 "plan's makespan (`doctor --plan`)", "speed-up", "packing"], rows)
        + "\nNo target: the ideal is the plan's makespan; the measured wall times also hold pytest's own "
          "start-up and collection (about a second here), the children's start and end, and the "
          f"controller's loop.\n\n{NOISE_NOTE}\n"
    )
    return Figure("scheduler", "GPU-aware parallel heavy tier", body, verdicts, reps)

