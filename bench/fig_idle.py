"""Figure 1, idle cost: a 2,000-test suite with no heavy marker, with the plugin and with ``-p no:heavy``.

What the plugin costs a suite that does not use it: importing it, probing the hardware once, and its
hooks (one pass over the items for tiers and gating, split's durations read from the terminal
reporter's reports at the session's end). An opted-in session with no test to isolate imports none of
the isolation machinery and, once an earlier session in the checkout has shown it has none (the
warm-up run here), forks no template.

Two measures side by side. Whole runs, timed and interleaved, are what a user sees, but on this shared
machine they differ by 10-30% from noise alone. So the plugin's own CPU time is also accounted for
directly (``hook_timer.py``: its import plus the time inside each of its hook implementations) and
divided by the baseline's best run; that estimate is what the verdict uses, the whole-run ratios are
the cross-check.
"""

from __future__ import annotations

import json
from pathlib import Path

import suites
from harness import (
    NOISE_NOTE,
    REPO,
    Figure,
    Variant,
    Verdict,
    clean_env,
    measure,
    median,
    ms,
    paired,
    pytest_argv,
    ratio,
    run_once,
    scratch,
    secs,
    spread,
    table,
)

TARGET = 1.03
ACCOUNTING_RUNS = 3
TOP_HOOKS = 6


def account(root: Path, args: list[str], runs: int) -> list[dict]:
    """``runs`` sessions with ``-p hook_timer``: the plugin's import and per-hook CPU seconds of each."""
    found = []
    for i in range(runs):
        out = root / f"hook-times-{i}.json"
        env = clean_env(PYTHONPATH=str(REPO / "bench"), BENCH_HOOK_TIMES=str(out))
        run_once(pytest_argv(*args, "-p", "hook_timer"), root, env)
        found.append(json.loads(out.read_text()))
    return found


def total_s(times: dict) -> float:
    return times["import_s"] + sum(s for s, _calls in times["hooks"].values())


def accounting_rows(what: str, runs: list[dict], base_cpu: float) -> list[list[str]]:
    """Per component, the least CPU time over the runs (noise only adds), as ms and share of the baseline."""
    def row(component: str, seconds: float) -> list[str]:
        return [what, component, ms(seconds), f"{100 * seconds / base_cpu:.1f}%"]

    best = min(runs, key=total_s)
    rows = [row("import of `pytest_heavy.plugin` and what it imports", min(r["import_s"] for r in runs))]
    hooks = sorted(best["hooks"].items(), key=lambda kv: -kv[1][0])
    for name, (_s, calls) in hooks[:TOP_HOOKS]:
        rows.append(row(f"`{name}` ({int(calls)} call{'s' if calls != 1 else ''})",
                        min(r["hooks"][name][0] for r in runs)))
    others = hooks[TOP_HOOKS:]
    rows.append(row(f"{len(others)} other hooks", sum(s for _name, (s, _calls) in others)))
    rows.append([f"**{cell}**" for cell in row("total (best run)", total_s(best))])
    return rows


# The plugin installed in a project that did not opt in, and in one that did (no heavy marker in either).
MODES = (("installed, not opted in", []), ("opted in", ["-o", "heavy_enabled=true"]))


def run(quick: bool) -> Figure:
    reps = {"collect": 2, "run": 2} if quick else {"collect": 10, "run": 5}
    runs = 1 if quick else ACCOUNTING_RUNS
    variants: dict[str, list[Variant]] = {}
    accounted: dict[tuple[str, str], list[dict]] = {}
    with scratch("idle") as root:
        count = suites.idle_suite(root, modules=20, per_module=100)
        for what, args in (("collect", ["-q", "--collect-only"]), ("run", ["-q"])):
            shown = f"pytest {' '.join(args)}"
            bare = pytest_argv(*args, "-p", "no:heavy")
            variants[what] = [Variant(f"`{shown} -p no:heavy`", [bare], root)]
            for mode, extra in MODES:
                command = pytest_argv(*args, *extra)
                variants[what].append(Variant(f"`{shown}`, plugin {mode}", [command], root))
            # The warm-up (an opted-in run) writes the bytecode of everything a session imports first.
            measure(variants[what], reps[what], warmup=variants[what][2:], progress=f"idle, {what}")
            for mode, extra in MODES:
                accounted[what, mode] = account(root, [*args, *extra], runs)
    rows, account_table, verdicts = [], [], []
    for what, (bare, *plugged) in variants.items():
        base_cpu = min(bare.cpus())
        rows.append([bare.label, spread(bare.walls(), secs), spread(bare.cpus(), secs), secs(base_cpu),
                     "1 (baseline)", "1 (baseline)"])
        for (mode, _extra), plugin in zip(MODES, plugged, strict=True):
            wall_r = paired(plugin.walls(), bare.walls())
            best = min(plugin.cpus())
            rows.append([plugin.label, spread(plugin.walls(), secs), spread(plugin.cpus(), secs),
                         secs(best), spread(wall_r, ratio), ratio(best / base_cpu)])
            account_table += accounting_rows(f"{what}, {mode}", accounted[what, mode], base_cpu)
            estimate = 1 + min(total_s(r) for r in accounted[what, mode]) / base_cpu
            target = f"{what}, {mode}: plugin at most {TARGET:.2f}x of -p no:heavy ({count} tests)"
            found = f"{ratio(estimate)} by accounting (whole runs: wall {ratio(median(wall_r))})"
            verdicts.append(Verdict(target, found, estimate <= TARGET))
    body = (
        f"A generated suite of {count} ordinary tests (20 modules: parametrized tests, tests with a fixture, "
        "methods of a class; no heavy marker), run with `-p no:heavy` (baseline), with the plugin installed "
        "in a project that did not opt in (no `heavy_*` key), and opted in (`-o heavy_enabled=true`): the "
        "cost a project pays for its light tests. The warm-up run (opted in) is the checkout's first "
        "session: it records in the pytest cache that no test needed a child, so the measured opted-in "
        "runs fork no template (a project with heavy modules pays for one; see the isolation figure).\n\n"
        "## Whole runs\n\n"
        + table(["variant", "wall", "CPU (user+sys)", "CPU, best run", "wall vs baseline",
                 "best CPU vs baseline"], rows)
        + f"\n{NOISE_NOTE}\n\n"
        "## The plugin's own CPU time\n\n"
        f"Accounted by `bench/hook_timer.py` in {runs} more sessions each (least per component). The share "
        "is of the baseline's best CPU time above; 1 + the total's share is the estimate the verdict "
        f"compares with the target of {TARGET:.2f}x. Not counted: `pytest_addoption` (it runs before the "
        "timer can wrap it; well under 1 ms), pluggy's dispatch to the extra hook implementations, the "
        "full garbage collections the plugin's objects bring on sooner, and what the opted-in session's "
        "heap freeze at the end of collection (`gc.freeze()`, counted under `cleanup`) saves later: "
        "pytest's own full collections at unconfigure and the interpreter's at exit no longer walk "
        "pytest and the plugins, which is why the opted-in whole runs are faster than the baseline. "
        "In an opted-in session `pytest_configure` includes importing what the session uses (the rest "
        "of the package is imported only there).\n\n"
        + table(["run", "component", "CPU time", "share of the baseline"], account_table)
    )
    return Figure("idle", "Idle cost", body, verdicts,
                  f"{reps['collect']} (`--collect-only`), {reps['run']} (full run)")
