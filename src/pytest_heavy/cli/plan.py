"""``pytest-heavy doctor --plan``: the packing ``--heavy-workers auto`` would use, running nothing.

The project is collected the way a session would collect it (ini keys, ``-m``/``-k``, gating for the
machine, ``--heavy-assume`` for another machine), the heavy modules are planned as the controller would
plan them, and the packing scheduler is driven through a simulated run: each module takes its recorded
wall time (an unrecorded one, the mean of the recorded ones), and starts as soon as the scheduler
places it. Nothing is started, nothing is written.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import pytest

from ..isolation import plan
from ..isolation.schedule import Job, Placement, make
from ..records import DurationsError, ModulePeaks, Store
from ..state import RUN


@dataclass
class Planned:
    module: str
    gpus: list[int]  # NVML indices
    start_s: float
    end_s: float
    recorded: bool  # a peak was recorded for it (else it runs alone, with the mean wall time)
    beside: list[str] = field(default_factory=list)


class _Collector:
    """A plugin that plans once collection (and gating) is over."""

    def __init__(self) -> None:
        self.doc: dict[str, Any] | None = None
        self.error = ""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        config = session.config
        run = config.stash[RUN]
        try:
            peaks = Store(config, run.settings.durations_path).read_peaks()
        except DurationsError as exc:
            self.error = str(exc)
            return
        units = plan.plan(session.items, run.settings, run.hardware) or []
        jobs = [u.job() for u in units if u.module]
        scheduler = make(dataclasses.replace(run.settings, packing=True), run.hardware, peaks)
        hw = run.hardware
        planned = simulate(scheduler, jobs, peaks, lambda p: p.indices(hw))
        makespan = max((p.end_s for p in planned), default=0.0)
        serial = sum(p.end_s - p.start_s for p in planned)
        self.doc = {"machine": hw.summary(), "modules": [dataclasses.asdict(p) for p in planned],
                    "makespan_s": makespan, "serial_s": serial,
                    "unrecorded": [p.module for p in planned if not p.recorded]}


def simulate(scheduler: Any, jobs: list[Job], peaks: dict[str, ModulePeaks],
             indices: Any) -> list[Planned]:
    """Drive ``scheduler`` through a run in which each job takes its recorded wall time."""
    known = [peaks[j.name].wall_s for j in jobs if j.name in peaks]
    default = sum(known) / len(known) if known else 1.0
    ready, now = list(jobs), 0.0
    running: list[tuple[float, Job, Placement, Planned]] = []
    planned: list[Planned] = []
    while ready or running:
        while (picked := scheduler.pick(ready)) is not None:
            job, placement = picked
            ready.remove(job)
            scheduler.started(job, placement)
            record = peaks.get(job.name)
            wall = record.wall_s if record else default
            item = Planned(job.name, indices(placement), now, now + wall, job.name in peaks)
            for _, _, other_placement, other in running:
                if set(other_placement.gpus) & set(placement.gpus):
                    other.beside.append(job.name)
                    item.beside.append(other.module)
            running.append((now + wall, job, placement, item))
            planned.append(item)
        if not running:
            break  # nothing placeable and nothing running: cannot happen with the built-in schedulers
        running.sort(key=lambda r: r[0])
        now = running[0][0]
        while running and running[0][0] <= now:
            scheduler.finished(running.pop(0)[1])
    return planned


def plan_document(pytest_args: list[str]) -> tuple[dict[str, Any] | None, str]:
    """(the plan, '') or (None, why there is none)."""
    collector = _Collector()
    # --heavy-workers=auto also turns pytest-heavy on where the project has not (yet): the plan is what
    # it would do, as doctor's other output is. The project's own arguments come after and win.
    args = ["--collect-only", "-p", "no:terminal", "-p", "no:cacheprovider", "--heavy-workers=auto"]
    code = pytest.main([*args, *pytest_args], plugins=[collector])
    if collector.error:
        return None, collector.error
    if collector.doc is None:
        return None, f"collection failed (pytest exit {int(code)}): run pytest --collect-only to see why"
    return collector.doc, ""


def print_plan(doc: dict[str, Any]) -> None:
    print(f"plan for --heavy-workers auto on: {doc['machine']}")
    if not doc["modules"]:
        print("no heavy module would run in a child here (see `pytest-heavy doctor` and heavy_isolate)")
        return
    header = ("module", "GPU", "start", "end", "beside", "recorded")
    rows = [header] + [(p["module"], ",".join(map(str, p["gpus"])) or "-", f"{p['start_s']:.1f}s",
                        f"{p['end_s']:.1f}s", str(len(p["beside"])), "yes" if p["recorded"] else "no: alone")
                       for p in doc["modules"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    makespan, serial = doc["makespan_s"], doc["serial_s"]
    speedup = serial / max(makespan, 1e-9)
    print(f"makespan {makespan:.1f}s against {serial:.1f}s one at a time ({speedup:.1f}x), "
          "from recorded wall times")
    if doc["unrecorded"]:
        print(f"{len(doc['unrecorded'])} module(s) without recorded peaks run alone on their GPUs, with the "
              "mean recorded wall time; a run with --heavy-workers auto records them")
