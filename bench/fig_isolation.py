"""Figure 3, the cost of isolation with the default configuration: issue #21's "done when".

Each suite runs twice per repetition, paired: isolated as a user gets it (no option, no
``heavy_preload``: ``auto`` starts children from the template process) and in-process
(``--heavy-isolate never``). Wall time is what a user waits for; CPU time (user + system of pytest
and every process it reaped: the template and the children) is the work isolation adds, and barely
moves when another job takes a core.

The suites are the shapes real ML suites take: small torch ops at test time; a tensor above ATen's
grain size built at import (it starts the OpenMP pool in the parent while it collects, after which
the parent cannot fork safely); a model built in a module-scoped fixture; a light test that runs a
large op in the parent before the heavy modules; and two heavy modules of 5,000 tests each (the
report transport). One more isolated run per suite, untimed, writes ``--heavy-report``; the check
reads it to make sure every module really ran in a child, and the *children came from* column names
where they started (the template, a fork of the parent, spawn) and why, when it was not the template.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

import suites
from harness import (
    NOISE_NOTE,
    Figure,
    RunFailed,
    Variant,
    Verdict,
    clean_env,
    measure,
    median,
    paired,
    pytest_argv,
    ratio,
    report_check,
    run_once,
    scratch,
    secs,
    spread,
    table,
)

WALL_TARGET = 1.3  # a torch suite isolated by default at most this much slower than in-process (wall)
CPU_TARGET = 1.6  # ... and this much more CPU
BIG_TARGET = 1.25  # 2 heavy modules of 5,000 tests (wall)
TESTS = 3  # tests per torch module
# -p no:randomly: the same order in both runs, where pytest-randomly is installed (a no-op elsewhere).
COMMON = ("-q", "-p", "no:randomly")

MODEL_FIXTURE = ("@pytest.fixture(scope='module')\ndef model():\n    torch.manual_seed(0)\n"
                 "    return torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.ReLU(),\n"
                 "                               torch.nn.Linear(256, 10))\n\n\n"
                 "@pytest.mark.parametrize('x', range({tests}))\n"
                 "def test_model(model, x):\n    assert model(torch.ones(4, 256)).shape == (4, 10)\n")
LIGHT_LARGE_OP = ("import torch\n\n\ndef test_light():\n"
                  "    assert (torch.ones(512, 512) @ torch.ones(512, 512)).sum().item() > 0\n")


@dataclass(frozen=True)
class Shape:
    """One suite of issue #21: its label and how its files differ from plain torch modules."""

    label: str
    weights: bool = False  # ``W = torch.ones(256, 256)`` at import
    fixture: bool = False  # a model built in a module-scoped fixture
    light_first: bool = False  # an unmarked test running a 512x512 matmul in the parent, first


SHAPES = (
    Shape("(a) small ops at test time"),
    Shape("(b) `W = torch.ones(256, 256)` at import", weights=True),
    Shape("(c) a model built in a module-scoped fixture", fixture=True),
    Shape("(d) a light test in the parent runs a large op first", light_first=True),
)


def shape_suite(root: Path, shape: Shape, modules: int) -> list[str]:
    """The shape's suite in ``root``: ``modules`` heavy torch modules of ``TESTS`` tests; file names."""
    names = suites.heavy_suite(root, modules, TESTS, torch=True, weights=shape.weights,
                               marker=suites.RAM_MARKER)
    if shape.fixture:
        for name in names:
            path = root / name
            head = path.read_text().split("@pytest.mark.parametrize")[0]
            path.write_text(head + MODEL_FIXTURE.format(tests=TESTS))
    if shape.light_first:
        (root / "test_000_light.py").write_text(LIGHT_LARGE_OP)
        names = ["test_000_light.py", *names]
    return names


def came_from(records: list[dict]) -> str:
    """Where the children started, counted by method, with the first reason one was not the template."""
    methods: dict[str, int] = {}
    for record in records:
        methods[record["start_method"]] = methods.get(record["start_method"], 0) + 1
    text = ", ".join(f"{method} ×{count}" for method, count in sorted(methods.items()))
    notes = [record["start_note"] for record in records if record.get("start_note")]
    return f"{text} ({notes[0]})" if notes else text


@dataclass
class Row:
    """One suite's paired runs and its targets."""

    label: str
    never: Variant
    auto: Variant
    wall_target: float
    cpu_target: float | None

    def walls(self) -> list[float]:
        return paired(self.auto.walls(), self.never.walls())

    def cpus(self) -> list[float]:
        return paired(self.auto.cpus(), self.never.cpus())

    def verdict(self) -> Verdict:
        wall, cpu = median(self.walls()), median(self.cpus())
        goal = f"at most {self.wall_target}x wall" + (f", {self.cpu_target}x CPU" if self.cpu_target else "")
        met = wall <= self.wall_target and (self.cpu_target is None or cpu <= self.cpu_target)
        return Verdict(f"{self.label}, isolated by default: {goal} of in-process",
                       f"{ratio(wall)} wall, {ratio(cpu)} CPU", met)

    def cells(self) -> list[str]:
        target = f"≤ {self.wall_target}x" + (f" / ≤ {self.cpu_target}x" if self.cpu_target else " / –")
        return [self.label, spread(self.never.walls(), secs), spread(self.auto.walls(), secs),
                spread(self.walls(), ratio), spread(self.never.cpus(), secs), spread(self.auto.cpus(), secs),
                spread(self.cpus(), ratio), target, "; ".join(sorted(self.auto.notes))]


def paired_row(label: str, root: Path, names: list[str], modules: int, reps: int, wall_target: float,
               cpu_target: float | None) -> Row:
    """In-process against the default configuration, measured in turn within each repetition.

    The timed runs write no ``--heavy-report``: asking for one also asks for every test's memory
    figures, which would be timed too. One more isolated run, untimed, writes it: every module ran
    in a child and passed, and where its child came from."""
    base = pytest_argv(*COMMON, *names)
    never = Variant("in-process", [[*base, "--heavy-isolate", "never"]], root)
    auto = Variant("default", [base], root)
    measure([never, auto], reps, warmup=[auto], progress=f"isolation, {label}")
    report = root / "report.json"  # in the suite's folder: a path outside it would move pytest's rootdir
    run_once([*base, "--heavy-report", str(report)], root)
    auto.notes.add(report_check(report, modules, note=came_from)())
    isolates(base, root)
    return Row(label, never, auto, wall_target, cpu_target)


HEAVY_TABLE = "heavy modules (pytest-heavy)"  # the terminal summary's title when modules were isolated


def isolates(argv: list[str], root: Path) -> None:
    """The timed command itself isolates (the report run could opt the project in by its option
    alone): its output has the heavy table, or RunFailed says it measured something else."""
    proc = subprocess.run(argv, cwd=root, env=clean_env(), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=600)
    if proc.returncode != 0 or HEAVY_TABLE not in proc.stdout:
        raise RunFailed(f"{' '.join(argv)} (in {root}) did not isolate:\n{proc.stdout[-3000:]}")


def run(quick: bool) -> Figure:
    # The torch suites take ~2 s a run, where this VM's noise moves a 3-run median by 0.1x: 7 runs.
    modules, big, reps, big_reps = (4, 500, 1, 1) if quick else (10, 5000, 7, 3)
    rows = []
    for shape in SHAPES:
        with scratch("isolation") as root:
            names = shape_suite(root, shape, modules)
            rows.append(paired_row(f"{modules} torch modules, {shape.label}", root, names, modules, reps,
                                   WALL_TARGET, CPU_TARGET))
    with scratch("isolation-big") as root:
        names = suites.big_suite(root, 2, big)
        label = f"2 modules x {big:,} tests (no torch)"
        rows.append(paired_row(label, root, names, 2, big_reps, BIG_TARGET, None))
    header = ["suite", "in-process wall", "isolated wall", "wall ratio", "in-process CPU", "isolated CPU",
              "CPU ratio", "target (wall / CPU)", "children came from"]
    body = (
        f"Each suite run with pytest's `{' '.join(COMMON)}` in-process (`--heavy-isolate never`) and "
        "isolated with the default configuration (no option, no `heavy_preload`), in turn within each "
        f"repetition. Every heavy module is marked `requires_heavy_ram`, and the ini's only pytest-heavy "
        "line, `heavy_ram_gib = 1`, is what opts the project in. The torch suites have "
        f"{modules} modules of {TESTS} tests, every module importing torch and every test running a small "
        f"op; the last suite has 2 modules of {big:,} tests `assert i >= 0` each.\n\n"
        "- *ratio*: isolated / in-process within one repetition; median [min–max] over the repetitions.\n"
        "- *CPU*: user + system time of pytest and every process it reaped (the template, the children).\n"
        "- *children came from*: the heavy report's start column for every module, from one more isolated "
        "run with `--heavy-report` (untimed: a report also asks for every test's memory figures; "
        "template: forked from "
        "the template process started before collection; fork: from the pytest parent; spawn: a new "
        "interpreter), and the reason the first one gave when it was not the template.\n"
        f"- Targets (issue #21): each torch shape at most {WALL_TARGET}x wall and {CPU_TARGET}x CPU of "
        f"in-process; 2 x 5,000 tests at most {BIG_TARGET}x wall.\n\n"
        f"## Whole suites, default configuration ({reps} repetitions of the torch suites, {big_reps} of the "
        f"last)\n\n"
        + table(header, [row.cells() for row in rows]) + f"\n{NOISE_NOTE}\n"
    )
    verdicts = [row.verdict() for row in rows]
    return Figure("isolation", "Isolation cost, default configuration", body, verdicts, reps)
