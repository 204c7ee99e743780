"""Balanced subsets: the least-loaded partition over recorded durations, and the snapshot the subsets of
one run share. The records themselves (durations, module peaks, their store) are ``records.py``.

Every subset is a separate pytest process that computes the whole partition again and keeps its own
share, so the partition must be a function of the selection and the durations alone: units are sorted
by (weight, name) and load ties go to the lowest subset index, never to the collection order.
"""

from __future__ import annotations

import heapq
import os
import tempfile
from pathlib import Path

from ..records import ModulePeaks as ModulePeaks  # re-exported: its import path before records.py existed
from ..records import Store, dump_durations, read_durations

# Set by `pytest-heavy split` (or by hand for Slurm arrays): the subsets of one run all partition with
# the durations this file held when the first of them collected, not with what earlier subsets recorded.
SNAPSHOT_ENV = "PYTEST_HEAVY_DURATIONS_SNAPSHOT"


def snapshot(path: Path, store: Store) -> dict[str, float]:
    """The durations every subset of one run partitions with: the first subset to collect publishes them.

    Without it, a subset starting after another finished would see that one's fresh records, compute a
    different partition and run tests twice or not at all. ``os.link`` fails when the file exists, so
    exactly one publisher wins, and it read the store before any subset could finish. The file to link
    has a fresh name (``mkstemp``), and ``link`` never writes through a link planted at ``path``.
    """
    if path.exists():
        return read_durations(path)
    durations = store.read()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(dump_durations(durations))
        os.link(tmp, path)
    except FileExistsError:
        durations = read_durations(path)
    finally:
        os.unlink(tmp)
    return durations


def share_snapshot(env: dict[str, str], path: Path) -> None:
    """Point the subsets of one run (started with ``env``) at one snapshot file, fresh for this run.

    An environment that already names one keeps it: a Slurm array's tasks share the file its script chose.
    """
    if SNAPSHOT_ENV not in env:
        path.unlink(missing_ok=True)  # a snapshot belongs to one run
        env[SNAPSHOT_ENV] = str(path.resolve())


def partition(weights: dict[str, float], n: int) -> list[list[str]]:
    """Greedy least-loaded assignment, longest unit first (LPT: within 4/3 of the best possible)."""
    loads = [(0.0, index) for index in range(n)]  # a heap: least load, then lowest index
    buckets: list[list[str]] = [[] for _ in range(n)]
    for unit in sorted(weights, key=lambda u: (-weights[u], u)):
        load, index = heapq.heappop(loads)
        buckets[index].append(unit)
        heapq.heappush(loads, (load + weights[unit], index))
    return buckets


def unit_weights(units: dict[str, str], durations: dict[str, float],
                 skipped: set[str]) -> dict[str, float]:
    """{unit: seconds} from {node id: unit}.

    Unrecorded items count as the mean of the recorded ones, items already marked skip as nothing (on
    a CPU machine a GPU test takes no time, whatever it took where it ran). Sums run in node-id order so
    every process gets the same floats.
    """
    nodeids = sorted(units)
    known = [durations[i] for i in nodeids if i in durations and i not in skipped]
    default = sum(known) / len(known) if known else 1.0
    weights: dict[str, float] = {}
    for nodeid in nodeids:
        seconds = 0.0 if nodeid in skipped else durations.get(nodeid, default)
        weights[units[nodeid]] = weights.get(units[nodeid], 0.0) + seconds
    return weights
