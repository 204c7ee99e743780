"""Figure 6, examples: what the example runner adds to each ``python <example>.py``.

The runner starts every example in its own process session with a bootstrap (faulthandler, optional
modules), drains its output, samples its memory and waits for its end; that is the cost measured
here. The per-example cost of the runner is the slope between a session with 1 example and one with
N, so the pytest session's own start is not charged to the examples.
"""

from __future__ import annotations

import json
import tempfile
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
    ms,
    paired,
    ratio,
    secs,
    spread,
    table,
)


def report_check(path: Path, count: int) -> Callable[[], str]:
    def check() -> str:
        records = [r for r in json.loads(path.read_text())["modules"] if r["kind"] == "example"]
        if len(records) != count or any(r["outcomes"] != {"passed": 1} for r in records):
            raise RunFailed(f"{path}: expected {count} passed examples, got {records}")
        return "ok"

    return check


def run(quick: bool) -> Figure:
    reps, count = (1, 4) if quick else (5, 10)
    with tempfile.TemporaryDirectory(prefix="heavy-bench-examples-") as tmp:
        root = Path(tmp)
        names = suites.examples_dir(root, count)
        runner = []
        for label, targets, n in (("1", names[:1], 1), (str(count), ["examples"], count)):
            report = root / f"report-{label}.json"
            runner.append(Variant(f"`python -m pytest` on {label} example{'s' if n > 1 else ''}",
                                  [[PY, "-m", "pytest", "-q", "--heavy-report", str(report), *targets]], root,
                                  check=report_check(report, n)))
        direct = Variant(f"`python <example>.py`, {count} times", [[PY, name] for name in names], root)
        measure([*runner, direct], reps, warmup=[runner[1]], progress="examples")
    one, many = runner
    slope = [(m - o) / (count - 1) for m, o in zip(many.walls(), one.walls(), strict=True)]
    per_direct = [w / count for w in direct.walls()]
    overhead = [s - d for s, d in zip(slope, per_direct, strict=True)]
    rows = [[v.label, spread(v.walls(), secs), spread(v.cpus(), secs)] for v in (one, many, direct)]
    body = (
        f"A docs/examples-style directory of {count} short scripts with a `# pytest:` header (ini "
        "`heavy_examples_dirs = examples`), run through pytest, and the same scripts run directly.\n\n"
        + table(["run", "wall", "CPU (user+sys)"], rows)
        + "\n" + table(["per example", "median [min–max]"], [
            ["through the runner: (N-example session − 1-example session) / (N − 1)", spread(slope, ms)],
            ["`python <example>.py`", spread(per_direct, ms)],
            ["overhead of the runner", spread(overhead, ms)],
            ["runner / direct", spread(paired(slope, per_direct), ratio)],
        ])
        + f"\nNo target in the issue; reported so a regression shows.\n\n{NOISE_NOTE}\n"
    )
    rel = median(paired(slope, per_direct))
    verdicts = [Verdict("example runner overhead per example (report only)",
                        f"+{ms(median(overhead))} on {ms(median(per_direct))} ({ratio(rel)})", None)]
    return Figure("examples", "Examples runner overhead", body, verdicts, reps)
