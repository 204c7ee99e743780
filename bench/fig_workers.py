"""Figure 5, parallel heavy modules: CPU-bound heavy modules with ``--heavy-workers 1`` and ``2``.

Each module's test burns a fixed amount of its own CPU time, so both runs do the same work and the
ratio shows how much of the machine's cores the controller manages to keep busy. On this shared
2-core machine the ideal is 2x only when no other job runs; the GPU-bound counterpart, on the GPU
machine, is in gpu.md.
"""

from __future__ import annotations

from collections import Counter

import suites
from harness import (
    NOISE_NOTE,
    Figure,
    Variant,
    Verdict,
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

# fork would be the cheapest, but two fork children at once used to break (docs/benchmarks/README.md, "Bugs
# found while measuring"; fixed since); the forkserver forks the same way from a server process, and keeps
# this figure's rows comparable with the earlier runs.
START = "forkserver"


def start_methods(records: list[dict]) -> str:
    """How many children each start method started, e.g. ``forkserver (8)``."""
    return ", ".join(f"{m} ({n})" for m, n in sorted(Counter(r["start_method"] for r in records).items()))


def run(quick: bool) -> Figure:
    reps, modules, cpu_s = (1, 4, 0.3) if quick else (3, 8, 0.4)
    with scratch("workers") as root:
        suites.cpu_bound_suite(root, modules, cpu_s)
        base = pytest_argv("-q")
        never = Variant("in-process (`--heavy-isolate never`)", [[*base, "--heavy-isolate", "never"]], root)
        workers = []
        for n in (1, 2):
            report = root / f"report-{n}.json"
            cmd = [*base, "--heavy-isolate", "always", "--heavy-start", START, "--heavy-workers", str(n),
                   "--heavy-report", str(report)]
            workers.append(Variant(f"`--heavy-isolate always --heavy-workers {n}`", [cmd], root,
                                   check=report_check(report, modules, note=start_methods)))
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
