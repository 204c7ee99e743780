"""The plan one Slurm array shares: which subset runs each unit, and what each unit needs.

``pytest-heavy split N --slurm`` collects once at submit time with ``PLAN_ENV`` naming a file that does
not exist yet: that session partitions as any subset would and publishes the whole assignment, with each
unit's node ids, seconds, GPU count and RSS peak, which the submitter turns into per-task resources.
Every array task then keeps exactly the units the plan gives its index, so its share depends on nothing
it sees on its own node: gating on a GPU node marks other tests skipped than on the login node, and
tasks finishing earlier record new durations into the shared cache.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from ..markers import needs
from ..records import ModulePeaks
from ..settings import Settings
from .durations import partition

PLAN_ENV = "PYTEST_HEAVY_SPLIT_PLAN"
# GPU and CPU units go to different tasks when the longest task grows by no more than this: a CPU task
# then holds no GPU while it runs.
SEPARATE_SLACK = 1.1


class PlanError(Exception):
    """A plan file that cannot be read, or one made for another N."""


@dataclass
class PlannedUnit:
    subset: int  # 1-based, as in --heavy-split i/N
    seconds: float  # the partition's weight: recorded, or the mean of the recorded ones
    gpus: int  # requires_gpu(count=K) (1 for any other GPU marker); 0 for CPU work
    rss_mib: float | None  # the recorded peak RSS of the unit's isolated module, when there is one
    nodeids: list[str]


@dataclass
class Plan:
    n: int
    by: str
    recorded: bool  # some of the selection had recorded durations (else every weight is a placeholder)
    units: dict[str, PlannedUnit]

    def subset(self, index: int) -> dict[str, PlannedUnit]:
        return {name: u for name, u in self.units.items() if u.subset == index}

    def dump(self) -> str:
        return json.dumps({"n": self.n, "by": self.by, "recorded": self.recorded,
                           "units": {k: asdict(v) for k, v in self.units.items()}}, indent=1, sort_keys=True)


def read_plan(path: Path) -> Plan | None:
    """The published plan, or None when none is published yet."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return Plan(int(doc["n"]), str(doc["by"]), bool(doc["recorded"]),
                    {k: PlannedUnit(**v) for k, v in doc["units"].items()})
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PlanError(f"{path}: not a split plan ({exc})") from None


def publish(path: Path, plan: Plan) -> Plan:
    """Publish ``plan`` unless another session did first (``os.link`` fails then); the winner's plan."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(plan.dump(), encoding="utf-8")
    try:
        os.link(tmp, path)
    except FileExistsError:
        return read_plan(path) or plan
    finally:
        tmp.unlink()
    return plan


def gpus_of(item: pytest.Item, settings: Settings) -> int:
    """The GPUs the item asks for, whatever gating decided on this machine (the task's node is another)."""
    found = needs(item, settings)  # a bad mark was a usage error at collection
    if not (found.gpu_marker or found.gpu_isolation):
        return 0
    return found.gpus or 1


def separate(weights: dict[str, float], gpu_units: set[str], n: int) -> list[list[str]]:
    """The partition of ``weights`` into ``n``, with GPU and CPU units in different subsets where that
    costs little balance (``SEPARATE_SLACK``): the best of every split into k GPU and n-k CPU subsets."""
    mixed = partition(weights, n)
    if n < 2 or not gpu_units or gpu_units >= set(weights):
        return mixed

    def makespan(buckets: list[list[str]]) -> float:
        return max(sum(weights[u] for u in bucket) for bucket in buckets)

    gpu = {u: w for u, w in weights.items() if u in gpu_units}
    cpu = {u: w for u, w in weights.items() if u not in gpu_units}
    best = min((partition(gpu, k) + partition(cpu, n - k) for k in range(1, n)), key=makespan)
    return best if makespan(best) <= makespan(mixed) * SEPARATE_SLACK else mixed


def build(items: list[pytest.Item], units: dict[str, str], weights: dict[str, float],
          buckets: list[list[str]], settings: Settings, peaks: dict[str, ModulePeaks],
          recorded: bool) -> Plan:
    subset_of = {unit: i for i, bucket in enumerate(buckets, 1) for unit in bucket}
    planned = {unit: PlannedUnit(subset_of[unit], weights[unit], 0, None, []) for unit in weights}
    for item in items:
        p = planned[units[item.nodeid]]
        p.nodeids.append(item.nodeid)
        p.gpus = max(p.gpus, gpus_of(item, settings))
        peak = peaks.get(item.nodeid.split("::", 1)[0])
        if peak is not None:
            p.rss_mib = max(p.rss_mib or 0.0, peak.rss_mib)
    return Plan(len(buckets), settings.split_by, recorded, planned)
