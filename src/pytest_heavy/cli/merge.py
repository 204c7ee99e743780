"""What both ways of running the subsets (``cli/split.py`` on this machine, ``cli/slurm.py`` as a Slurm
array) do with their results: one junit file, one coverage data file, one exit status.

Read from each subset's junit file, not from its output, so the combined summary does not depend on
pytest's terminal format.
"""

from __future__ import annotations

import io
import os
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

MERGED_NAME = "junit.xml"
OUTCOMES = ("passed", "failed", "skipped", "errors")
# pytest exit statuses from least to most severe; "no tests" (5) is barely worse than success. Subsets the
# split left empty already exit 0 (the plugin sees to it), so a 5 here means nothing was selected at all.
SEVERITY = (0, 5, 1, 2, 4, 3)


@dataclass
class Totals:
    counts: Counter[str]
    suites: int
    missing: list[Path]

    def line(self) -> str:
        return ", ".join(f"{self.counts[k]} {k}" for k in OUTCOMES)


def worst(statuses: list[int]) -> int:
    """The most severe status; anything pytest does not define (a signal's 128+n) is worst of all."""
    return max(statuses, key=lambda s: SEVERITY.index(s) if s in SEVERITY else len(SEVERITY), default=0)


def merge_junit(inputs: list[Path], out: Path) -> Totals:
    """One ``<testsuites>`` holding every input's suites (hostnames and timings kept), counts summed.

    Outcomes are counted per ``<testcase>`` the way pytest counts them: a test that failed and then
    errored in teardown is one failure and one error; xfails are junit skips.
    """
    merged = ET.Element("testsuites", name="pytest-heavy split")
    sums: Counter[str] = Counter()
    counts: Counter[str] = Counter({k: 0 for k in OUTCOMES})
    elapsed, suites, missing = 0.0, 0, []
    for path in inputs:
        try:
            root = ET.parse(path).getroot()
        except (OSError, ET.ParseError):
            missing.append(path)  # the subset died before pytest wrote its report
            continue
        for suite in [root] if root.tag == "testsuite" else root.findall("testsuite"):
            merged.append(suite)
            suites += 1
            for key in ("tests", "failures", "errors", "skipped"):
                sums[key] += int(suite.get(key, "0"))
            elapsed += float(suite.get("time", "0"))
            for case in suite.iter("testcase"):
                kinds = {child.tag for child in case}
                counts["failed"] += "failure" in kinds
                counts["errors"] += "error" in kinds
                counts["skipped"] += "skipped" in kinds
                counts["passed"] += not kinds & {"failure", "error", "skipped"}
    for key in ("tests", "failures", "errors", "skipped"):
        merged.set(key, str(sums[key]))
    merged.set("time", f"{elapsed:.3f}")
    out.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(merged).write(out, encoding="utf-8", xml_declaration=True)
    return Totals(counts, suites, missing)


def wants_coverage(pytest_args: list[str]) -> bool:
    cov = any(a == "--cov" or a.startswith("--cov=") for a in pytest_args)
    return cov and "--no-cov" not in pytest_args


def coverage_base() -> str:
    """The data file coverage would write here (COVERAGE_FILE, else the project's config, else .coverage)."""
    import coverage

    return os.path.abspath(coverage.Coverage().config.data_file)


def combine_coverage(base: str, data_files: list[str]) -> str:
    """Combine the subsets' data files into ``base`` with coverage's API; one line saying what happened."""
    import coverage
    from coverage.exceptions import CoverageException

    found = [f for f in data_files if os.path.exists(f)]
    if not found:
        return "coverage: no data from the subsets"
    cov = coverage.Coverage(data_file=base)  # starts clean: an earlier run's data is replaced
    cov.combine(found, keep=False)
    cov.save()
    try:
        total = cov.report(file=io.StringIO())
    except CoverageException as exc:
        return f"coverage: {len(found)} subsets combined into {base} ({exc})"
    return f"coverage: {len(found)} subsets combined into {base}, {total:.0f}% total"
