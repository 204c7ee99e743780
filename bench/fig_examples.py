"""Figure 6, examples: what the example runner adds to each ``python <example>.py``.

The runner starts every example in its own process session with a bootstrap (faulthandler, optional
modules), drains its output, samples its memory and waits for its end; that is the cost measured
here. The per-example cost of the runner is the slope between a session with 1 example and one with
N, so the pytest session's own start is not charged to the examples. The verdict uses CPU time (user +
system of the whole process tree), which this shared machine's load disturbs far less than wall time.
"""

from __future__ import annotations

from collections.abc import Callable

import suites
from harness import (
    NOISE_NOTE,
    PY,
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


def example_passed(record: dict) -> bool:
    return record["outcomes"] == {"passed": 1}


TARGET_S = 0.005  # the runner adds at most 5 ms per example


def run(quick: bool) -> Figure:
    reps, count = (1, 4) if quick else (8, 20)
    with scratch("examples") as root:
        names = suites.examples_dir(root, count)
        runner = []
        for label, targets, n in (("1", names[:1], 1), (str(count), ["examples"], count)):
            report = root / f"report-{label}.json"
            runner.append(Variant(f"`python -m pytest` on {label} example{'s' if n > 1 else ''}",
                                  [pytest_argv("-q", "--heavy-report", str(report), *targets)], root,
                                  check=report_check(report, n, kind="example", passed=example_passed)))
        direct = Variant(f"`python <example>.py`, {count} times", [[PY, name] for name in names], root)
        measure([*runner, direct], reps, warmup=[runner[1]], progress="examples")
    one, many = runner

    def per_example(values: Callable[[Variant], list[float]]) -> tuple[list[float], list[float]]:
        """Per repetition: the runner's slope per example, and a direct run's share."""
        slope = [(m - o) / (count - 1) for m, o in zip(values(many), values(one), strict=True)]
        return slope, [d / count for d in values(direct)]

    wall_slope, wall_direct = per_example(Variant.walls)
    cpu_slope, cpu_direct = per_example(Variant.cpus)
    wall_over = [s - d for s, d in zip(wall_slope, wall_direct, strict=True)]
    cpu_over = [s - d for s, d in zip(cpu_slope, cpu_direct, strict=True)]
    rows = [[v.label, spread(v.walls(), secs), spread(v.cpus(), secs)] for v in (one, many, direct)]
    body = (
        f"A docs/examples-style directory of {count} short scripts with a `# pytest:` header (ini "
        "`heavy_examples_dirs = examples`), run through pytest, and the same scripts run directly.\n\n"
        + table(["run", "wall", "CPU (user+sys)"], rows)
        + "\n" + table(["per example", "wall, median [min–max]", "CPU, median [min–max]"], [
            ["through the runner: (N-example session − 1-example session) / (N − 1)", spread(wall_slope, ms),
             spread(cpu_slope, ms)],
            ["`python <example>.py`", spread(wall_direct, ms), spread(cpu_direct, ms)],
            ["overhead of the runner", spread(wall_over, ms), spread(cpu_over, ms)],
            ["runner / direct", spread(paired(wall_slope, wall_direct), ratio),
             spread(paired(cpu_slope, cpu_direct), ratio)],
        ])
        + f"\nTarget: the runner adds at most {ms(TARGET_S)} per example (CPU; wall for reference). Part of "
        "it is pytest's own per-test cost (about 1 ms), which any test pays.\n\n"
        f"{NOISE_NOTE}\n"
    )
    found = (f"+{ms(median(cpu_over))} on {ms(median(cpu_direct))} (wall: +{ms(median(wall_over))} on "
             f"{ms(median(wall_direct))})")
    verdicts = [Verdict(f"example runner overhead per example at most +{ms(TARGET_S)} (CPU)", found,
                        median(cpu_over) <= TARGET_S)]
    return Figure("examples", "Examples runner overhead", body, verdicts, reps)
