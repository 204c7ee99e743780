"""Figure 3, isolation cost per module: each start method vs in-process and vs one pytest per module.

Every variant runs the same suite at two sizes, K1 and K2 heavy modules. The difference between the
sizes, minus the in-process run's difference, divided by K2 - K1, is what one more isolated module
costs; what is left at K1 is the fixed cost (the template's imports, say), paid once per session.
The comparison users make today, one ``python -m pytest <module>`` per module (without the plugin),
has no fixed part: its per-module cost is its total over K2.

Each isolated run writes ``--heavy-report``; the check reads it to make sure every module really ran
in a child, and with which start method (a refused fork falls back to spawn, and the table says so).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import suites
from harness import (
    NOISE_NOTE,
    Figure,
    Variant,
    Verdict,
    measure,
    median,
    ms,
    paired,
    pytest_argv,
    ratio,
    report_check,
    scratch,
    secs,
    spread,
    table,
)

METHODS = ("spawn", "fork", "template")
FORK_TARGET_S = 0.060
SPAWN_TARGET = 1.2
TESTS = 4


def isolated_check(path: Path, modules: int, method: str, walls: list[float]) -> Callable[[], str]:
    """After a run: every module isolated and passed; keep the children's wall times in ``walls`` and
    note the start methods the children used (a refused fork falls back, and the note says so)."""

    def note(records: list[dict]) -> str:
        walls.extend(r["wall_s"] for r in records)
        used = sorted({r["start_method"] for r in records})
        if method == "auto" or used == [method]:
            return ", ".join(used)
        return f"{', '.join(used)} ({method} refused)"

    return report_check(path, modules, note=note)


Pair = tuple[Variant, Variant]  # the same way of running, at K1 and at K2 modules


@dataclass
class SuiteRuns:
    """Every way of running one suite, and the child wall times its isolated K2 runs reported."""

    k1: int
    k2: int
    never: Pair
    methods: dict[str, Pair]
    loop: Variant
    child_walls: dict[str, list[float]]

    def variants(self) -> list[Variant]:
        return [*self.never, *(v for pair in self.methods.values() for v in pair), self.loop]


def suite_runs(root: Path, names: list[str], k1: int, k2: int) -> SuiteRuns:
    base = pytest_argv("-q")
    never = [Variant(f"never@{k}", [[*base, "--heavy-isolate", "never", *names[:k]]], root) for k in (k1, k2)]
    child_walls: dict[str, list[float]] = {}
    methods: dict[str, Pair] = {}
    for method in METHODS:
        pair = []
        for k in (k1, k2):
            report = root / f"report-{method}-{k}.json"
            walls = child_walls.setdefault(method, []) if k == k2 else []
            cmd = [*base, "--heavy-isolate", "always", "--heavy-start", method, "--heavy-report", str(report),
                   *names[:k]]
            pair.append(Variant(f"{method}@{k}", [cmd], root, check=isolated_check(report, k, method, walls)))
        methods[method] = (pair[0], pair[1])
    loop = Variant("loop", [[*base, "-p", "no:heavy", name] for name in names[:k2]], root)
    return SuiteRuns(k1, k2, (never[0], never[1]), methods, loop, child_walls)


def per_module(pair: Pair, never: Pair, k1: int, k2: int) -> list[float]:
    """Per repetition: (method's K2 - K1 difference - in-process difference) / (K2 - K1)."""
    return [((m2 - m1) - (n2 - n1)) / (k2 - k1)
            for m1, m2, n1, n2 in zip(pair[0].walls(), pair[1].walls(), never[0].walls(), never[1].walls(),
                                      strict=True)]


def suite_section(title: str, reps: int, runs: SuiteRuns, verdicts: list[Verdict]) -> str:
    k1, k2, never, loop = runs.k1, runs.k2, runs.never, runs.loop
    loop_module = [w / k2 for w in loop.walls()]
    rows = [["in-process (`--heavy-isolate never`)", "parent", spread(never[0].walls(), secs),
             spread(never[1].walls(), secs), "0 (baseline)", "0 (baseline)", "–", "–"]]
    for method, pair in runs.methods.items():
        added = per_module(pair, never, k1, k2)
        small, large = pair[0].walls(), pair[1].walls()
        fixed = [(m1 - n1) - k1 * a for m1, n1, a in zip(small, never[0].walls(), added, strict=True)]
        ran_as = "; ".join(sorted(pair[0].notes | pair[1].notes))
        rows.append([f"`--heavy-isolate always --heavy-start {method}`", ran_as, spread(small, secs),
                     spread(large, secs), spread(added, ms), spread(fixed, ms),
                     ms(median(runs.child_walls[method])), spread(paired(large, loop.walls()), ratio)])
        if method == "spawn":
            rel = paired(added, loop_module)
            verdicts.append(Verdict(f"{title}: spawn adds at most {SPAWN_TARGET}x a bare `python -m pytest` "
                                    "per module", f"{ratio(median(rel))} ({ms(median(added))} vs "
                                    f"{ms(median(loop_module))})", median(rel) <= SPAWN_TARGET))
        else:
            verdicts.append(Verdict(f"{title}: {method} adds at most {ms(FORK_TARGET_S)} per module",
                                    f"{ms(median(added))} ({ran_as})", median(added) <= FORK_TARGET_S))
    rows.append([f"one `python -m pytest -p no:heavy <module>` per module ({k2} runs)", "–", "–",
                 spread(loop.walls(), secs), f"{spread(loop_module, ms)} a module", "0", "–", "1 (baseline)"])
    header = ["variant", "children ran as", f"wall, {k1} module{'s' if k1 > 1 else ''}",
              f"wall, {k2} modules", "added per module", "fixed cost", "child wall per module (median)",
              f"{k2} modules vs per-module runs"]
    return f"## {title} ({reps} repetitions)\n\n" + table(header, rows)


SUITE_TARGET = 1.3  # a torch suite isolated by default at most this much slower than in-process (wall)
SUITE_CPU_TARGET = 1.6  # ... and CPU
BIG_TARGET = 1.25  # 2 heavy modules of 5,000 tests
MODEL_FIXTURE = ("@pytest.fixture(scope='module')\ndef model():\n    torch.manual_seed(0)\n"
                 "    return torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(),\n"
                 "                               torch.nn.Linear(256, 10))\n\n\n"
                 "def test_model(model, x):\n    assert model(torch.ones(4, 256)).shape == (4, 10)\n")
LIGHT_LARGE_OP = ("import torch\n\n\ndef test_light():\n    torch.set_num_threads(2)\n"
                  "    assert (torch.ones(512, 512) @ torch.ones(512, 512)).sum().item() > 0\n")
# The issue #21 shapes, default configuration (no heavy_preload): small ops; an op above ATen's grain
# size at import (starts the OpenMP pool in the parent while it collects); a model built in a
# module-scoped fixture; a light test in the parent that runs a large op before the heavy modules.
SHAPES = ("small ops", "`W = torch.ones(256, 256)` at import", "model in a module fixture",
          "light test with a large op first")


def shape_suite(root: Path, shape: str, modules: int) -> list[str]:
    names = suites.heavy_suite(root, modules, 3, torch=True, weights=shape == SHAPES[1])
    if shape == SHAPES[2]:
        for name in names:
            path = root / name
            path.write_text(path.read_text().split("@pytest.mark.parametrize")[0]
                            + "@pytest.fixture(params=range(3))\ndef x(request):\n"
                            + "    return request.param\n\n\n" + MODEL_FIXTURE)
    if shape == SHAPES[3]:
        (root / "test_000_light.py").write_text(LIGHT_LARGE_OP)
        names = ["test_000_light.py", *names]
    return names


def ab_row(label: str, root: Path, names: list[str], modules: int, reps: int, wall_target: float,
           cpu_target: float | None, verdicts: list[Verdict]) -> list[str]:
    """In-process against the default configuration, paired per repetition."""
    base = pytest_argv("-q", *names)
    report = root / "report.json"
    never = Variant("in-process", [[*base, "--heavy-isolate", "never"]], root)
    auto = Variant("auto", [[*base, "--heavy-report", str(report)]], root,
                   check=report_check(report, modules, "auto", []))
    measure([never, auto], reps, warmup=[never], progress=f"isolation, {label}")
    rel = paired(auto.walls(), never.walls())
    rel_cpu = paired(auto.cpus(), never.cpus())
    used = "; ".join(sorted(auto.notes))
    ok = median(rel) <= wall_target and (cpu_target is None or median(rel_cpu) <= cpu_target)
    goal = f"at most {wall_target}x wall" + (f", {cpu_target}x CPU" if cpu_target else "")
    verdicts.append(Verdict(f"{label}, isolated by default: {goal} of in-process",
                            f"{ratio(median(rel))} wall, {ratio(median(rel_cpu))} CPU ({used})", ok))
    return [label, spread(never.walls(), secs), spread(auto.walls(), secs), used, spread(rel, ratio),
            spread(rel_cpu, ratio)]


def torch_suites(quick: bool, verdicts: list[Verdict]) -> str:
    """Whole torch suites, ``auto`` (the default, no heavy_preload) against in-process, in each shape of
    issue #21, and 2 heavy modules of 5,000 tests (the report transport)."""
    modules, reps = (4, 1) if quick else (10, 3)
    rows = []
    for shape in SHAPES:
        with scratch("torch") as root:
            names = shape_suite(root, shape, modules)
            rows.append(ab_row(f"{modules} torch modules, {shape}", root, names, modules, reps,
                               SUITE_TARGET, SUITE_CPU_TARGET, verdicts))
    with scratch("big") as root:
        big = 500 if quick else 5000
        names = suites.heavy_suite(root, 2, big)
        rows.append(ab_row(f"2 modules x {big} tests", root, names, 2, reps, BIG_TARGET, None,
                           verdicts))
    return (f"## Whole suites, default configuration ({reps} repetitions)\n\n"
            + table(["suite", "in-process", "isolated (`auto`)", "children ran as", "wall ratio",
                     "CPU ratio"], rows))


def run(quick: bool) -> Figure:
    reps = 1 if quick else 3
    plans = [
        ("Modules without torch", False, (1, 3) if quick else (2, 8), reps),
        ("Modules that import torch", True, (1, 2) if quick else (1, 3), max(1, reps - 1)),
    ]
    sections, verdicts = [], []
    for title, torch, (k1, k2), suite_reps in plans:
        with scratch("isolation") as root:
            names = suites.heavy_suite(root, k2, TESTS, torch=torch, preload=torch)
            runs = suite_runs(root, names, k1, k2)
            measure(runs.variants(), suite_reps, warmup=[runs.never[1]],
                    progress=f"isolation, {title.lower()}")
            sections.append(suite_section(title, suite_reps, runs, verdicts))
    sections.append(torch_suites(quick, verdicts))
    body = (
        f"Suites of heavy modules (`pytestmark = pytest.mark.requires_gpu_isolation`, {TESTS} tests each), "
        "run at two sizes with `--heavy-isolate always` and each start method, in-process with "
        "`--heavy-isolate never`, and as one `python -m pytest -p no:heavy <module>` per module (what suites "
        "do today). The torch suite imports torch in every module and runs a small torch op in every test; "
        "its ini sets `heavy_preload = torch`, which the template imports once.\n\n"
        "- *added per module*: (K2-run − K1-run − (in-process K2 − in-process K1)) / (K2 − K1), per "
        "repetition.\n"
        "- *fixed cost*: what the K1 run costs beyond in-process and beyond K1 × the per-module cost "
        "(the template's imports, waiting for them).\n"
        "- *child wall per module*: the module's wall time in `--heavy-report` (start of the child to its "
        "end).\n"
        f"- Targets: fork and template add at most {ms(FORK_TARGET_S)} per module; spawn adds at most "
        f"{SPAWN_TARGET}x the per-module cost of one `python -m pytest <module>`.\n\n"
        + "\n".join(sections) + f"\n{NOISE_NOTE}\n"
    )
    return Figure("isolation", "Isolation cost per module", body, verdicts, reps)
