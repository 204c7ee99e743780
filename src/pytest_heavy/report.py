"""What pytest-heavy adds to the terminal summary."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import pytest


def counted(n: int, reason: str) -> str:
    """'3 need a GPU (...)' / '1 needs a GPU (...)' / '2 CICD=1: ...'."""
    if reason.startswith("needs ") and n != 1:
        reason = "need " + reason[len("needs "):]
    return f"{n} {reason}"


def gated_summary(tr: pytest.TerminalReporter, gated: dict[str, list[str]], theirs: int = 0) -> None:
    """Tests skipped by gating, grouped by reason: a section with -rs, one line otherwise. Only skips
    that carry our reason count; ``theirs`` gated tests were skipped first by the project's own marks."""
    if not gated and not theirs:
        return
    total = sum(len(ids) for ids in gated.values())
    parts = [counted(len(ids), reason) for reason, ids in sorted(gated.items(), key=lambda kv: -len(kv[1]))]
    also = (f"{theirs} more would be gated but the project's own skip marks skipped them first "
            "(their reasons are the project's)") if theirs else ""
    chars = tr.reportchars if hasattr(tr, "reportchars") else ""
    if "s" in chars or "a" in chars or "A" in chars:
        tr.write_sep("-", "gated tests (pytest-heavy)")
        for part in [*parts, also] if also else parts:
            tr.write_line(part)
    else:
        tail = f"; {also}" if also else ""
        tr.write_line(f"pytest-heavy: {total} gated: {'; '.join(parts) or 'none'}{tail} (-rs for details)")


@dataclass
class HeavyRecord:
    """One row of the heavy table: an isolated module or an example, with its memory accounting."""

    unit: str  # module path ("test/test_x.py") or example node id
    kind: str  # "module" or "example"
    start_method: str  # template, fork, spawn, subprocess (examples)
    tests: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    wall_s: float = 0.0
    peak_rss_mib: float = 0.0
    peak_gpu_mib: float | None = None
    gpu_before_mib: int | None = None
    gpu_after_mib: int | None = None
    released: str = "n/a"
    exit: str = "exit 0"  # or SIGSEGV, timeout, stopped, ...
    restarts: int = 0  # fresh children started after a crash
    killed: list[str] = field(default_factory=list)  # leftover processes killed at the end
    # the child trees' (time, RSS MiB, GPU MiB) samples, for --heavy-report-html; not in the JSON
    samples: list[tuple[float, float, float | None]] = field(default_factory=list, repr=False)
    # Placed by the packing scheduler (--heavy-workers auto); empty otherwise.
    gpus: list[int] = field(default_factory=list)  # NVML indices of the GPUs its child was pinned to
    beside: list[str] = field(default_factory=list)  # other modules that ran on those GPUs meanwhile
    peak_gpu_per_device_mib: list[float] | None = None  # per GPU, in the child's CUDA_VISIBLE_DEVICES order
    note: str = ""  # e.g. "retried alone after OOM while sharing GPU 1"
    start_note: str = ""  # why the child did not start with the chosen method (fork unsafe, refused)
    worker: str = ""  # the pytest-xdist worker (gw0, ...) whose child it was, under -n; empty otherwise
    ran: set[str] = field(default_factory=set, repr=False)  # node ids that reported; not in the JSON

    def tests_run(self) -> int:
        """The unit's tests, less those a stop rule (-x, --maxfail, --sw) kept from running."""
        return len(self.ran) if self.exit.startswith("stopped") else self.tests

    def add_gpu_peaks(self, per_device: list[float] | None) -> None:
        """Merge one attempt's per-GPU peaks into the record's (the maximum per GPU)."""
        if per_device is None:
            return
        old = self.peak_gpu_per_device_mib or []
        merged = [max(a, b) for a, b in zip(old, per_device, strict=False)]
        longer = old if len(old) > len(per_device) else per_device
        self.peak_gpu_per_device_mib = merged + longer[len(merged):]

    def count(self, report: pytest.TestReport) -> None:
        """Tally one report the way the terminal summary counts outcomes."""
        self.ran.add(report.nodeid)
        if report.when == "call" or (report.when == "setup" and not report.passed):
            key = outcome_key(report)
        elif report.when == "teardown" and report.failed:
            key = "error"
        else:
            return
        self.outcomes[key] = self.outcomes.get(key, 0) + 1


def outcome_key(report: pytest.TestReport) -> str:
    if hasattr(report, "wasxfail"):
        return "xfailed" if report.skipped else "xpassed"
    if report.failed:
        return "failed" if report.when == "call" else "error"
    return report.outcome


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f} MiB"


def heavy_table(tr: pytest.TerminalReporter, records: list[HeavyRecord], schedule: str = "") -> None:
    """The 'heavy modules' section: one row per isolated module or example.

    ``schedule`` is the packing scheduler's summary line (makespan against the sum of module times);
    when it is given, the table also shows the GPU each module ran on and how many ran beside it.
    """
    if not records:
        return
    tr.write_sep("-", "heavy modules (pytest-heavy)")
    placed = bool(schedule)
    header = ("module", "tests", "outcomes", "wall", "start", *(("GPU", "beside") if placed else ()),
              "peak RSS", "peak GPU", "GPU released", "exit")
    rows = [header]
    for r in records:
        outcomes = " ".join(f"{n} {k}" for k, n in sorted(r.outcomes.items())) or "-"
        exit_ = r.exit + (f" ({r.restarts} restart{'s' if r.restarts > 1 else ''})" if r.restarts else "")
        if r.note:
            exit_ += f" ({r.note})"
        where = (",".join(map(str, r.gpus)) or "-", str(len(r.beside))) if placed else ()
        start = f"{r.start_method} in {r.worker}" if r.worker else r.start_method
        rows.append((r.unit, str(r.tests_run()), outcomes, f"{r.wall_s:.1f}s", start, *where,
                     _mib(r.peak_rss_mib), _mib(r.peak_gpu_mib), r.released, exit_))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        tr.write_line("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for r in records:
        if r.start_note:
            tr.write_line(f"{r.unit}: started with {r.start_method}: {r.start_note}")
        for victim in r.killed:
            tr.write_line(f"{r.unit}: killed leftover process {victim}")
    if schedule:
        tr.write_line(schedule)


def xdist_line(tr: pytest.TerminalReporter, modules: set[str], mode: str, heavy_workers: bool) -> None:
    """With -n: the heavy modules xdist's workers ran unisolated (a ``--dist`` mode that may split a
    module across workers), and that ``--heavy-workers`` has no effect (each worker runs its heavy
    modules one at a time: -n bounds the children running at once)."""
    if modules:
        what = f"{len(modules)} heavy module{'s' if len(modules) > 1 else ''}"
        tr.write_line(f"pytest-heavy: {what} ran inside pytest-xdist workers without isolation "
                      f"(--dist {mode} may split a module across workers; --dist load, loadscope, loadfile "
                      "or each isolate them)", yellow=True)
    if heavy_workers:
        tr.write_line("pytest-heavy: --heavy-workers has no effect with -n: each worker runs its heavy "
                      "modules one at a time, in a child each", yellow=True)


def schedule_line(records: list[HeavyRecord], makespan_s: float, gpus: int) -> str:
    """Under the table with --heavy-workers auto: the makespan against the sum of the modules' own wall
    times, i.e. what running them side by side saved."""
    modules = [r for r in records if r.kind == "module"]
    if not modules:
        return ""
    total = sum(r.wall_s for r in modules)
    where = f"{gpus} GPU{'s' if gpus != 1 else ''}" if gpus else "no GPU"
    n = f"{len(modules)} module{'s' if len(modules) != 1 else ''}"
    return (f"heavy schedule (--heavy-workers auto, {where}): {n} in {makespan_s:.1f}s wall; "
            f"one at a time they took {total:.1f}s ({total / max(makespan_s, 1e-9):.1f}x)")


def write_json(path: str, records: list[HeavyRecord], hardware: dict[str, object],
               extra: dict[str, object] | None = None) -> None:
    """--heavy-report: the same rows as JSON (schema in docs/isolation.md: 'The --heavy-report JSON'),
    plus the top-level keys other concerns add (``extra``: memory attribution's ``tests`` and ``leaks``)."""
    rows = [{**{k: v for k, v in asdict(r).items() if k not in ("samples", "ran")}, "tests": r.tests_run()}
            for r in records]
    doc = {**(extra or {}), "schema": 1, "hardware": hardware, "modules": rows}
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(doc, fh, indent=2, sort_keys=True)
        fh.write("\n")
