"""Figure 5, parallel heavy modules: CPU-bound heavy modules with ``--heavy-workers 1`` and ``2``.

Each module's test burns a fixed amount of its own CPU time, so both runs do the same work and the
ratio shows how much of the machine's cores the controller manages to keep busy. On this shared
2-core machine the ideal is 2x only when no other job runs; the GPU-bound counterpart, on the GPU
machine, is in gpu.md.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import suites
from harness import (
    NOISE_NOTE,
    PY,
    Figure,
    RunFailed,
    Variant,
    Verdict,
    measure,
    median,
    paired,
    ratio,
    secs,
    spread,
    table,
)

# fork would be the cheapest, but two fork children at once break (see README.md, "Bugs found"); the
# forkserver forks the same way from a server process.
START = "forkserver"


def report_check(path: Path, modules: int) -> Callable[[], str]:
    def check() -> str:
        records = json.loads(path.read_text())["modules"]
        if len(records) != modules or any(r["exit"] != "exit 0" for r in records):
            raise RunFailed(f"{path}: expected {modules} isolated modules that passed, got {records}")
        return ", ".join(f"{m} ({n})" for m, n in sorted(Counter(r["start_method"] for r in records).items()))

    return check


def run(quick: bool) -> Figure:
    reps, modules, cpu_s = (1, 4, 0.3) if quick else (3, 8, 0.4)
    with tempfile.TemporaryDirectory(prefix="heavy-bench-workers-") as tmp:
        root = Path(tmp)
        suites.cpu_bound_suite(root, modules, cpu_s)
        base = [PY, "-m", "pytest", "-q"]
        never = Variant("in-process (`--heavy-isolate never`)", [[*base, "--heavy-isolate", "never"]], root)
        workers = []
        for n in (1, 2):
            report = root / f"report-{n}.json"
            cmd = [*base, "--heavy-isolate", "always", "--heavy-start", START, "--heavy-workers", str(n),
                   "--heavy-report", str(report)]
            workers.append(Variant(f"`--heavy-isolate always --heavy-workers {n}`", [cmd], root,
                                   check=report_check(report, modules)))
        measure([never, *workers], reps, progress="workers")
    one, two = workers
    speedup = paired(one.walls(), two.walls())
    rows = [[never.label, "parent", spread(never.walls(), secs), spread(never.cpus(), secs), "–"]]
    rows += [[v.label, "; ".join(sorted(v.notes)), spread(v.walls(), secs), spread(v.cpus(), secs),
              spread(paired(one.walls(), v.walls()), ratio)] for v in workers]
    body = (
        f"{modules} heavy modules, each one test that burns {cpu_s:g} s of its own CPU time "
        f"({modules * cpu_s:g} s of work in all), `--heavy-start {START}`.\n\n"
        + table(["variant", "children ran as", "wall", "CPU (user+sys)", "speed-up vs 1 worker"], rows)
        + f"\nNo target: the ideal speed-up with 2 workers is 2x on 2 idle cores.\n\n{NOISE_NOTE}\n"
    )
    verdicts = [Verdict(f"{modules} CPU-bound heavy modules: 2 workers vs 1 (report only)",
                        f"{ratio(median(speedup))} faster", None)]
    return Figure("workers", "Parallel heavy modules", body, verdicts, reps)
