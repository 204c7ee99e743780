"""Figure: what per-test memory figures cost (``--heavy-report`` turns them on; memory attribution).

Measuring a test means three readings of the process tree (setup start, call end, teardown end), a reset
of the kernel's high-water mark, and a sampling thread in the process that runs the test. The target is
that this adds at most 2% to an isolated run. The suite's tests each burn a fixed amount of their own
CPU time (as model tests compute), so the figure compares like with like however busy the machine is.

Variants, each an isolated run (``--heavy-isolate always --heavy-start fork``) of the same suite:
- not asked: no report, nothing measured per test (today's per-module peaks only);
- asked: ``--heavy-report``, every test measured and written into the JSON.
The in-process pair (``--heavy-isolate never``) shows the same for tests run by the pytest process.
"""

from __future__ import annotations

import json
from pathlib import Path

import suites
from harness import (
    Figure,
    RunFailed,
    Variant,
    Verdict,
    measure,
    median,
    paired,
    pytest_argv,
    ratio,
    scratch,
    secs,
    spread,
    table,
)

TARGET = 1.02  # asked / not asked, isolated: at most +2 %


def variant(root: Path, label: str, isolate: str, asked: bool, expected: int) -> Variant:
    report = root / f"report-{label}.json"
    args = pytest_argv("-q", "-p", "no:cacheprovider", "--heavy-isolate", isolate, "--heavy-start", "fork")
    if asked:
        args.append(f"--heavy-report={report}")

    def check() -> str:
        if asked:
            measured = len(json.loads(report.read_text())["tests"])
            if measured != expected:
                raise RunFailed(f"{label}: {measured} tests measured, expected {expected}")
        return label

    return Variant(label, [args], root, check=check)


def run(quick: bool) -> Figure:
    modules, tests, cpu_ms, reps = (2, 5, 20.0, 2) if quick else (10, 20, 100.0, 5)
    with scratch("memattr") as root:
        suites.cpu_bound_suite(root, modules, cpu_ms / 1000, tests)
        total = modules * tests
        variants = [variant(root, "isolated", "always", False, total),
                    variant(root, "isolated, measured", "always", True, total),
                    variant(root, "in-process", "never", False, total),
                    variant(root, "in-process, measured", "never", True, total)]
        measure(variants, reps, progress="memattr")
    iso, iso_m, inp, inp_m = variants
    rows, verdicts = [], []
    for base, asked in ((iso, iso_m), (inp, inp_m)):
        wall, cpu = paired(asked.walls(), base.walls()), paired(asked.cpus(), base.cpus())
        rows.append([base.label, spread(base.walls(), secs), spread(asked.walls(), secs), spread(wall, ratio),
                     spread(cpu, ratio)])
    wall_iso = median(paired(iso_m.walls(), iso.walls()))
    verdicts.append(Verdict(f"per-test figures add at most {round((TARGET - 1) * 100)}% to an isolated run "
                            "(wall, paired)", ratio(wall_iso), wall_iso <= TARGET))
    header = ["run", "wall, not asked", "wall, `--heavy-report` (measured)", "wall ratio (paired)",
              "CPU ratio (paired)"]
    body = (f"{modules} heavy modules x {tests} tests, each test burning {cpu_ms:g} ms of its own CPU time; "
            f"{reps} interleaved repetitions; ratios are measured / not measured within one repetition.\n\n"
            + table(header, rows)
            + f"\nTarget: measuring every test adds at most {round((TARGET - 1) * 100)}% to an isolated "
            "run.\n")
    return Figure("memattr", "Cost of per-test memory figures", body, verdicts, reps)
