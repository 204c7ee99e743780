"""Figure 4, parent memory: the pytest parent's own peak RSS with 1, 10 and 50 isolated heavy modules.

The parent keeps a record, reports and output per module; if any of it leaked, a suite of hundreds of
heavy modules would grow the parent that is supposed to stay small. The peak is the parent's own
``ru_maxrss`` (RUSAGE_SELF, read in the parent after ``pytest.main`` returns), so the children, which
hold the real memory, are not counted.
"""

from __future__ import annotations

import json
from pathlib import Path

import suites
from harness import PY, Figure, Variant, Verdict, clean_env, log, measure, report_check, scratch, table

METHODS = ("spawn", "forkserver")
TARGET_MB = 50.0
TESTS = 2

# ``python -m pytest`` with the parent's own peak RSS written out after the session.
RSS_MAIN = """\
import json, os, resource, sys
import pytest
code = int(pytest.main(sys.argv[1:]))
rss = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS:"))
with open(os.environ["BENCH_RSS"], "w") as fh:
    json.dump({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "end_kib": rss}, fh)
sys.exit(code)
"""


def mb(kib: float) -> str:
    return f"{kib * 1024 / 1e6:.1f} MB"


def rss_variant(root: Path, label: str, args: list[str], modules: int, isolated: bool,
                peaks: dict[str, dict]) -> Variant:
    out, report = root / f"rss-{label}.json", root / f"report-{label}.json"
    extra = ["--heavy-report", str(report)] if isolated else []

    isolated_modules = report_check(report, modules, passed=lambda record: True)  # peaks, not outcomes

    def check() -> str:
        peaks[label] = json.loads(out.read_text())
        if isolated:
            isolated_modules()
        return label

    cmd = [PY, "-c", RSS_MAIN, "-q", *args, *extra]
    return Variant(label, [cmd], root, env=clean_env(BENCH_RSS=str(out)), check=check)


def run(quick: bool) -> Figure:
    sizes = (1, 5, 10) if quick else (1, 10, 50)
    peaks: dict[str, dict] = {}
    with scratch("memory") as root:
        names = suites.heavy_suite(root, max(sizes), TESTS)
        variants: list[Variant] = []
        for n in sizes:
            never = ["--heavy-isolate", "never", *names[:n]]
            variants.append(rss_variant(root, f"never@{n}", never, n, False, peaks))
            for method in METHODS:
                args = ["--heavy-isolate", "always", "--heavy-start", method, *names[:n]]
                variants.append(rss_variant(root, f"{method}@{n}", args, n, True, peaks))
        warm = [v for v in variants if v.label == f"never@{max(sizes)}"]  # compiles every module once
        measure(variants, reps=1, warmup=warm, progress="memory")
    rows, verdicts = [], []
    lo, hi = sizes[0], sizes[-1]
    for method in ("never", *METHODS):
        cells = [mb(peaks[f"{method}@{n}"]["peak_kib"]) for n in sizes]
        growth_kib = peaks[f"{method}@{hi}"]["peak_kib"] - peaks[f"{method}@{lo}"]["peak_kib"]
        label = "in-process (`--heavy-isolate never`), for reference" if method == "never" else f"`{method}`"
        rows.append([label, *cells, mb(growth_kib), mb(peaks[f"{method}@{hi}"]["end_kib"])])
        if method != "never":
            growth = growth_kib * 1024 / 1e6
            verdicts.append(Verdict(f"{method}: parent peak RSS grows at most {TARGET_MB:.0f} MB from {lo} "
                                    f"to {hi} isolated modules", f"+{growth:.1f} MB", growth <= TARGET_MB))
    log("memory: done")
    header = ["parent", *[f"peak RSS, {n} module{'s' if n > 1 else ''}" for n in sizes],
              f"growth {lo} → {hi}", f"RSS at the end, {hi} modules"]
    body = (
        f"Heavy modules of {TESTS} tests each (no torch: the parent's growth is what is measured), run with "
        "`--heavy-isolate always` and each start method; the pytest parent is "
        "`python -c '...pytest.main(...)'`, "
        "which reads its own `ru_maxrss` (RUSAGE_SELF: children excluded) and `VmRSS` after the session. "
        "One run per cell: peak RSS does not depend on the machine's load. The in-process row is the same "
        "modules run in the parent, for scale (it also collects and imports every module).\n\n"
        + table(header, rows)
        + f"\nTarget: the parent's peak grows by at most {TARGET_MB:.0f} MB (10^6 bytes) from {lo} to {hi} "
        "isolated modules.\n"
    )
    return Figure("memory", "Parent memory with many isolated modules", body, verdicts, 1)
