"""Figure 7, CI mode on a large suite: ``CICD=1 pytest`` with and without the plugin.

CI mode turns on memory cleanup and isolates every heavy module. Cleanup used to run ``gc.collect()``
after every test; on a heap holding a large library each collection costs 80 ms or more, which made a
real 3,000-test suite 6.7x slower. This figure runs a suite of that shape (``suites.ci_suite``) three
ways, interleaved: without the plugin, with it (targeted cleanup and ``gc.freeze()``), and with it but
cleanup off (``-o heavy_cleanup=never``), which isolates what cleanup itself costs.
"""

from __future__ import annotations

import tempfile
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
    ratio,
    secs,
    spread,
    table,
)

TARGET = 1.03


def run(quick: bool) -> Figure:
    reps = 2 if quick else 5
    size = dict(modules=30, per_module=10, heavy_modules=2) if quick else dict(modules=300, per_module=10,
                                                                                heavy_modules=5)
    with tempfile.TemporaryDirectory(prefix="heavy-bench-ci-") as tmp:
        root = Path(tmp)
        count = suites.ci_suite(root, **size)
        env = clean_env(CICD="1")
        args = ["-q", "-m", "not qualitative"]
        bare = Variant("`CICD=1 pytest -p no:heavy`", [[PY, "-m", "pytest", *args, "-p", "no:heavy"]],
                       root, env)
        plugin = Variant("`CICD=1 pytest`, plugin", [[PY, "-m", "pytest", *args]], root, env)
        no_cleanup = Variant("`CICD=1 pytest -o heavy_cleanup=never`, plugin",
                             [[PY, "-m", "pytest", *args, "-o", "heavy_cleanup=never"]], root, env)
        variants = (bare, plugin, no_cleanup)
        measure(variants, reps, progress="ci mode")
    rows = []
    for v in variants:
        vs = "1 (baseline)" if v is bare else spread(paired(v.walls(), bare.walls()), ratio)
        cpu_vs = "1 (baseline)" if v is bare else spread(paired(v.cpus(), bare.cpus()), ratio)
        rows.append([v.label, spread(v.walls(), secs), spread(v.cpus(), secs), vs, cpu_vs])
    measured = median(paired(plugin.walls(), bare.walls()))
    verdicts = [Verdict(f"CICD=1, {count} tests importing a large library: plugin at most {TARGET:.2f}x "
                        "of -p no:heavy (wall)", f"{ratio(measured)}", measured <= TARGET)]
    body = (
        f"A generated suite of {count} tests in {size['modules']} modules, each importing `biglib` "
        "(about 1.2 million objects, the heap a large ML library leaves), "
        f"{size['heavy_modules']} modules marked `requires_heavy_ram`; run with "
        "`CICD=1 -m \"not qualitative\"`. "
        "With the plugin, CI mode isolates the heavy modules (each in a child) and cleans memory after "
        "their tests; the baseline runs everything in one process.\n\n"
        + table(["variant", "wall", "CPU (user+sys)", "wall vs baseline", "CPU vs baseline"], rows)
        + f"\n{NOISE_NOTE}\n"
    )
    return Figure("cimode", "CI mode on a large suite", body, verdicts, reps)
