"""What runs measured: each test's duration and each isolated module's peaks, and the store that keeps both.

Durations feed ``--heavy-split``'s partition; module peaks (``ModulePeaks``: wall time, peak RSS, peak
GPU memory per device) feed ``--heavy-workers auto``, which packs children by them. A module of its own
so the scheduler and the session read them without importing the split plugin.

Peaks live beside the durations, never in the durations file itself, which stays a plain
``{node id: seconds}`` object that other tools read: cache key ``heavy/peaks``, and a committed file
named after the durations file with ``.peaks.json`` added. ``Store.record`` is the one writer of both.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

CACHE_KEY = "heavy/durations"
PEAKS_CACHE_KEY = "heavy/peaks"
PEAKS_SUFFIX = ".peaks.json"  # the committed peaks file: the durations file's name plus this
# Above any real measurement (seconds or MiB), and low enough that sums over a whole suite stay finite:
# JSON's Infinity, NaN and 1e400 (which Python reads as inf) are refused, and so is 1e308.
LARGEST = 1e12


T = TypeVar("T")


class DurationsError(Exception):
    """A durations file that is not a JSON object of {node id: seconds}."""


def measurement(value: object) -> bool:
    """A finite number from 0 to ``LARGEST`` (not a bool, which JSON would let through as 0 or 1)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value) and 0 <= value <= LARGEST)


def as_durations(data: object, source: str) -> dict[str, float]:
    if not isinstance(data, dict) or not all(isinstance(k, str) and measurement(v) for k, v in data.items()):
        raise DurationsError(f"{source}: expected a JSON object of {{node id: seconds}}, each a finite "
                             f"number from 0 to {LARGEST:g}")
    return {k: float(v) for k, v in data.items()}


def _json(text: str, source: str) -> object:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise DurationsError(f"{source}: not JSON ({exc})") from None
    except RecursionError:
        raise DurationsError(f"{source}: not a durations file (JSON nested too deeply)") from None


def parse_durations(text: str, source: str) -> dict[str, float]:
    return as_durations(_json(text, source), source)


def _read(path: Path, parse: Callable[[object, str], T]) -> T | None:
    """``parse`` of the file's JSON, or None when there is no such file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return parse(_json(text, str(path)), str(path))


def read_durations(path: Path) -> dict[str, float]:
    return _read(path, as_durations) or {}


def dump_durations(durations: dict[str, float]) -> str:
    """Sorted keys, one per line: a committed file whose diffs show only the tests that changed."""
    return json.dumps(durations, indent=2, sort_keys=True) + "\n"


def rounded(seconds: float) -> float:
    """Two significant digits: enough to balance on, and a committed file that does not churn on noise."""
    return float(f"{seconds:.2g}")


@dataclass(frozen=True)
class ModulePeaks:
    """What one isolated module needed when it last ran: the scheduler's input (``isolation/schedule``).

    ``gpu_mib`` lists the peak per GPU the module's child used, in the order the child saw them (its
    ``CUDA_VISIBLE_DEVICES``); None when it was never measured on a real GPU.
    """

    wall_s: float
    rss_mib: float
    gpu_mib: tuple[float, ...] | None = None

    def to_json(self) -> dict[str, object]:
        return {"wall_s": self.wall_s, "rss_mib": self.rss_mib,
                "gpu_mib": None if self.gpu_mib is None else list(self.gpu_mib)}

    @classmethod
    def from_json(cls, data: object, source: str) -> ModulePeaks:
        gpu = data.get("gpu_mib") if isinstance(data, dict) else None
        if not (isinstance(data, dict) and measurement(data.get("wall_s"))
                and measurement(data.get("rss_mib"))
                and (gpu is None or (isinstance(gpu, list) and all(measurement(v) for v in gpu)))):
            raise DurationsError(f"{source}: expected {{module: {{wall_s, rss_mib, gpu_mib}}}}, got {data!r}")
        return cls(float(data["wall_s"]), float(data["rss_mib"]),  # type: ignore[arg-type]
                   None if gpu is None else tuple(float(v) for v in gpu))

    def merged_over(self, old: ModulePeaks | None) -> ModulePeaks:
        """A run without a real GPU measured no GPU peak: it keeps the one recorded where there was one."""
        if self.gpu_mib is None and old is not None and old.gpu_mib is not None:
            return ModulePeaks(self.wall_s, self.rss_mib, old.gpu_mib)
        return self


def as_peaks(data: object, source: str) -> dict[str, ModulePeaks]:
    if not isinstance(data, dict):
        raise DurationsError(f"{source}: expected a JSON object of {{module: peaks}}")
    return {str(k): ModulePeaks.from_json(v, f"{source}: {k}") for k, v in data.items()}


def read_peaks(path: Path) -> dict[str, ModulePeaks]:
    return _read(path, as_peaks) or {}


def dump_peaks(peaks: dict[str, ModulePeaks]) -> str:
    return json.dumps({k: v.to_json() for k, v in peaks.items()}, indent=2, sort_keys=True) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Readers (other subsets collecting) never see a half-written file, and nobody can choose where it
    goes: the temporary file has a fresh name (``mkstemp``, exclusive create) in the target's directory,
    and ``os.replace`` then swaps it in, replacing a link planted at ``path`` instead of writing through.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            os.fchmod(out.fileno(), 0o666 & ~_umask())  # what open() would have made: a committed file
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class Store:
    """The committed file (ini ``heavy_durations_path``) under the pytest cache (key ``heavy/durations``).

    The cache holds this machine's latest measurements and overrides the committed file, which holds
    the team's; both are merged into, never replaced, so a partial run keeps the other records.
    """

    def __init__(self, config: pytest.Config, durations_path: str, write_file: bool = False) -> None:
        self.config = config
        self.file = config.rootpath / durations_path if durations_path else None
        self.peaks_file = self.file.with_name(self.file.name + PEAKS_SUFFIX) if self.file else None
        self.write_file = write_file  # --heavy-store-durations: the committed files too, not only the cache

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
        lock = self.cache.mkdir("heavy") / "durations.lock"
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW
        with os.fdopen(os.open(lock, flags, 0o644), "a") as handle:
            # Some shared file systems refuse locks (ENOLCK); a lost record is better than a failed run.
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield

    def _cached(self, key: str = CACHE_KEY, parse: Callable[[object, str], Any] = as_durations) -> Any:
        assert self.cache is not None
        try:
            return parse(self.cache.get(key, {}), f"cache {key}")
        except (DurationsError, RecursionError):
            return {}  # a damaged cache entry is re-recorded, as pytest does with its own keys

    def read(self) -> dict[str, float]:
        """Committed file first, this machine's cache over it. A damaged committed file is an error."""
        with self._lock(exclusive=False):
            durations = read_durations(self.file) if self.file else {}
            if self.cache is not None:
                durations.update(self._cached())
        return durations

    def read_peaks(self) -> dict[str, ModulePeaks]:
        """Module peaks: committed file first, this machine's cache over it (as ``read``)."""
        with self._lock(exclusive=False):
            peaks = read_peaks(self.peaks_file) if self.peaks_file else {}
            if self.cache is not None:
                peaks.update(self._cached(PEAKS_CACHE_KEY, as_peaks))
        return peaks

    def record(self, measured: dict[str, float], peaks: dict[str, ModulePeaks] | None = None) -> None:
        """Merge this run's durations and module peaks into the cache, and into the committed files
        when ``write_file``; records of tests and modules this run did not measure are kept."""
        peaks = peaks or {}
        if not measured and not peaks:
            return
        with self._lock(exclusive=True):
            if self.cache is not None:
                if measured:
                    self.cache.set(CACHE_KEY, {**self._cached(), **measured})
                if peaks:
                    cached = self._cached(PEAKS_CACHE_KEY, as_peaks)
                    merged = {k: v.merged_over(cached.get(k)) for k, v in peaks.items()}
                    self.cache.set(PEAKS_CACHE_KEY, {k: v.to_json() for k, v in {**cached, **merged}.items()})
            if self.file is None or not self.write_file:
                return
            try:
                committed = read_durations(self.file)
                committed_peaks = read_peaks(self.peaks_file) if self.peaks_file else {}
            except DurationsError as exc:
                # Leave a file we cannot read (a merge conflict, say) for a person to fix.
                warnings.warn(pytest.PytestWarning(f"durations not written: {exc}"), stacklevel=1)
                return
            if measured:
                _write_if_changed(self.file, dump_durations({**committed, **measured}))
            if peaks and self.peaks_file is not None:
                merged = {k: v.merged_over(committed_peaks.get(k)) for k, v in peaks.items()}
                _write_if_changed(self.peaks_file, dump_peaks({**committed_peaks, **merged}))


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        write_atomically(path, text)
