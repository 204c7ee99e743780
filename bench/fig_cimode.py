"""Figure 7, CI mode on a large suite: ``CICD=1 pytest`` with and without the plugin.

CI mode turns on memory cleanup and isolates every heavy module. Cleanup used to run ``gc.collect()``
after every test; on a heap holding a large library each collection costs 80 ms or more, which made a
real 3,000-test suite 6.7x slower. This figure runs a suite of that shape (``suites.ci_suite``) three
ways, interleaved: without the plugin, with it (targeted cleanup and ``gc.freeze()``), and with it but
cleanup off (``-o heavy_cleanup=never``), which isolates what cleanup itself costs.
"""

from __future__ import annotations

from pathlib import Path

import suites
from harness import (
    NOISE_NOTE,
    Figure,
    Variant,
    Verdict,
    clean_env,
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

TARGET = 1.03


def pair(label: str, args: list[str], root: Path, env: dict[str, str]) -> tuple[Variant, Variant]:
    """The same command without the plugin (``-p no:heavy``) and with it."""
    base = pytest_argv(*args)
    return (Variant(f"`{label} -p no:heavy`", [[*base, "-p", "no:heavy"]], root, env),
            Variant(f"`{label}`, plugin", [base], root, env))


def run(quick: bool) -> Figure:
    reps = 2 if quick else 3
    size = dict(modules=30, per_module=10, heavy_modules=2) if quick else dict(modules=300, per_module=10,
                                                                                heavy_modules=5)
    args = ["-q", "-m", "not qualitative"]
    with scratch("ci") as root:
        count = suites.ci_suite(root, **size)
        ci, plain = clean_env(CICD="1"), clean_env()
        bare, plugin = pair("CICD=1 pytest", args, root, ci)
        no_cleanup = Variant("`CICD=1 pytest -o heavy_cleanup=never`, plugin",
                             [pytest_argv(*args, "-o", "heavy_cleanup=never")], root, ci)
        local = pair("pytest", args, root, plain)  # not CI mode: heavy modules isolated, no cleanup
        collect = pair("pytest --collect-only", [*args, "--collect-only"], root, plain)
        variants = (bare, plugin, no_cleanup, *local, *collect)
        measure(variants, reps, progress="ci mode")
    rows = []
    for v in variants:
        base = {id(plugin): bare, id(no_cleanup): bare, id(local[1]): local[0], id(collect[1]): collect[0]}
        against = base.get(id(v))
        vs = "1 (baseline)" if against is None else spread(paired(v.walls(), against.walls()), ratio)
        cpu_vs = "1 (baseline)" if against is None else spread(paired(v.cpus(), against.cpus()), ratio)
        rows.append([v.label, spread(v.walls(), secs), spread(v.cpus(), secs), vs, cpu_vs])
    ci_wall = median(paired(plugin.walls(), bare.walls()))
    local_cpu = median(paired(local[1].cpus(), local[0].cpus()))
    collect_cpu = median(paired(collect[1].cpus(), collect[0].cpus()))
    verdicts = [Verdict(f"CICD=1, {count} tests importing a large library: plugin at most {TARGET:.2f}x "
                        "of -p no:heavy (wall)", f"{ratio(ci_wall)}", ci_wall <= TARGET),
                Verdict(f"same suite, not CI mode: plugin at most {TARGET:.2f}x of -p no:heavy (CPU)",
                        f"{ratio(local_cpu)}", local_cpu <= TARGET),
                Verdict(f"same suite, --collect-only: plugin at most {TARGET:.2f}x of -p no:heavy (CPU)",
                        f"{ratio(collect_cpu)}", collect_cpu <= TARGET)]
    body = (
        f"A generated suite of {count} tests in {size['modules']} modules, each importing `biglib` "
        "(about 1.2 million objects, the heap a large ML library leaves), "
        f"{size['heavy_modules']} modules marked `requires_heavy_ram`; run with "
        "`-m \"not qualitative\"`, in CI mode (`CICD=1`), outside it, and with `--collect-only`. "
        "With the plugin, the heavy modules run each in a child, and CI mode also cleans memory after "
        "their tests; the baselines run everything in one process.\n\n"
        + table(["variant", "wall", "CPU (user+sys)", "wall vs baseline", "CPU vs baseline"], rows)
        + f"\n{NOISE_NOTE}\n"
    )
    return Figure("cimode", "CI mode on a large suite", body, verdicts, reps)
