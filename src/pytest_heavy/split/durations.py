"""The durations store (committed file under the pytest cache), and the least-loaded partition over it.

Every subset is a separate pytest process that computes the whole partition again and keeps its own
share, so the partition must be a function of the selection and the durations alone: units are sorted
by (weight, name) and load ties go to the lowest subset index, never to the collection order.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import json
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

CACHE_KEY = "heavy/durations"
# Set by `pytest-heavy split` (or by hand for Slurm arrays): the subsets of one run all partition with
# the durations this file held when the first of them collected, not with what earlier subsets recorded.
SNAPSHOT_ENV = "PYTEST_HEAVY_DURATIONS_SNAPSHOT"


class DurationsError(Exception):
    """A durations file that is not a JSON object of {node id: seconds}."""


def as_durations(data: object, source: str) -> dict[str, float]:
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0
        for k, v in data.items()
    ):
        raise DurationsError(f"{source}: expected a JSON object of {{node id: seconds}}")
    return {k: float(v) for k, v in data.items()}


def parse_durations(text: str, source: str) -> dict[str, float]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise DurationsError(f"{source}: not JSON ({exc})") from None
    return as_durations(data, source)


def read_durations(path: Path) -> dict[str, float]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    return parse_durations(text, str(path))


def dump_durations(durations: dict[str, float]) -> str:
    """Sorted keys, one per line: a committed file whose diffs show only the tests that changed."""
    return json.dumps(durations, indent=2, sort_keys=True) + "\n"


def rounded(seconds: float) -> float:
    """Two significant digits: enough to balance on, and a committed file that does not churn on noise."""
    return float(f"{seconds:.2g}")


def _write_atomically(path: Path, text: str) -> None:
    """Readers (other subsets collecting) never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Store:
    """The committed file (ini ``heavy_durations_path``) under the pytest cache (key ``heavy/durations``).

    The cache holds this machine's latest measurements and overrides the committed file, which holds
    the team's; both are merged into, never replaced, so a partial run keeps the other records.
    """

    def __init__(self, config: pytest.Config, durations_path: str) -> None:
        self.config = config
        self.file = config.rootpath / durations_path if durations_path else None

    @property
    def cache(self) -> pytest.Cache | None:
        """Looked up on use: the cache provider configures after us; absent under -p no:cacheprovider."""
        return getattr(self.config, "cache", None)

    @contextlib.contextmanager
    def _lock(self, exclusive: bool) -> Iterator[None]:
        """Serialize concurrent sessions (``pytest-heavy split -j K``) so no merge loses another's records."""
        if self.cache is None:
            yield
            return
        with open(self.cache.mkdir("heavy") / "durations.lock", "a") as handle:
            # Some shared file systems refuse locks (ENOLCK); a lost record is better than a failed run.
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield

    def _cached(self) -> dict[str, float]:
        assert self.cache is not None
        try:
            return as_durations(self.cache.get(CACHE_KEY, {}), f"cache {CACHE_KEY}")
        except DurationsError:
            return {}  # a damaged cache entry is re-recorded, as pytest does with its own keys

    def read(self) -> dict[str, float]:
        """Committed file first, this machine's cache over it. A damaged committed file is an error."""
        with self._lock(exclusive=False):
            durations = read_durations(self.file) if self.file else {}
            if self.cache is not None:
                durations.update(self._cached())
        return durations

    def record(self, measured: dict[str, float]) -> None:
        if not measured:
            return
        with self._lock(exclusive=True):
            if self.cache is not None:
                self.cache.set(CACHE_KEY, {**self._cached(), **measured})
            if self.file is None:
                return
            try:
                committed = read_durations(self.file)
            except DurationsError as exc:
                # Leave a file we cannot read (a merge conflict, say) for a person to fix.
                warnings.warn(pytest.PytestWarning(f"durations not written: {exc}"), stacklevel=1)
                return
            text = dump_durations({**committed, **measured})
            if not self.file.exists() or self.file.read_text(encoding="utf-8") != text:
                _write_atomically(self.file, text)


def snapshot(path: Path, store: Store) -> dict[str, float]:
    """The durations every subset of one run partitions with: the first subset to collect publishes them.

    Without it, a subset starting after another finished would see that one's fresh records, compute a
    different partition and run tests twice or not at all. ``os.link`` fails when the file exists, so
    exactly one publisher wins, and it read the store before any subset could finish.
    """
    if path.exists():
        return read_durations(path)
    durations = store.read()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(dump_durations(durations), encoding="utf-8")
    try:
        os.link(tmp, path)
    except FileExistsError:
        durations = read_durations(path)
    finally:
        tmp.unlink()
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
