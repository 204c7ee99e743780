"""``@pytest.mark.heavy_limit_memory(rss="2 GiB", vram="10 GiB")``: a test fails when its peak exceeds
a limit, with the measured peak in the message (the process-tree and GPU counterpart of pytest-memray's
``limit_memory``).

The peak is the process tree's, from the test's setup start to its call end, so a module-scope fixture
that loads a model in the first test's setup counts against that test: it is what the machine must hold
while the test runs. Bad marker arguments are a usage error naming the test and the marker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from ..assume import AssumeError, parse_size_mib
from ..markers import closest_mark

if TYPE_CHECKING:
    from .sampler import Reading

MARKER = "heavy_limit_memory"
HELP = ("fail the test when its process tree's peak RSS or GPU memory (setup start to call end) exceeds "
        "a size: rss=\"2 GiB\", vram=\"10 GiB\" (a bare number is GiB)")


@dataclass(frozen=True)
class Limit:
    rss_mib: float | None = None
    vram_mib: float | None = None


def _size(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what}: expected a size such as \"2 GiB\" or \"512 MiB\", got {value!r}")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"{what}: must be positive, got {value!r}")
        return float(value) * 1024  # a bare number is GiB, as everywhere in pytest-heavy
    try:
        mib = parse_size_mib(value, what)
    except AssumeError as exc:
        raise ValueError(str(exc)) from None
    if mib <= 0:
        raise ValueError(f"{what}: must be positive, got {value!r}")
    return float(mib)


def of(item: pytest.Item) -> Limit | None:
    """The item's limit, or None without the marker; ValueError naming the marker when malformed."""
    mark = closest_mark(item, MARKER)
    if mark is None:
        return None
    if mark.args:
        raise ValueError(f"{MARKER}: takes keyword arguments only (rss=..., vram=...), got {mark.args!r}")
    unknown = sorted(set(mark.kwargs) - {"rss", "vram"})
    if unknown:
        raise ValueError(f"{MARKER}: unknown argument {', '.join(unknown)} (expected rss and/or vram)")
    if not mark.kwargs:
        raise ValueError(f"{MARKER}: give rss=\"2 GiB\" and/or vram=\"10 GiB\"")
    rss, vram = mark.kwargs.get("rss"), mark.kwargs.get("vram")
    return Limit(rss_mib=_size(rss, f"{MARKER}(rss={rss!r})") if rss is not None else None,
                 vram_mib=_size(vram, f"{MARKER}(vram={vram!r})") if vram is not None else None)


def check(items: list[pytest.Item]) -> bool:
    """Collection time: every marker well-formed, or a usage error naming the test. Whether any test
    has a limit."""
    found = False
    for item in items:
        try:
            found = of(item) is not None or found
        except ValueError as exc:
            raise pytest.UsageError(f"{item.nodeid}: {exc}") from None
    return found


def _mib(value: float) -> str:
    return f"{value:,.0f} MiB" if value < 10240 else f"{value / 1024:,.1f} GiB"


def exceeded(limit: Limit, peak: Reading) -> list[str]:
    """One line per limit the peak went over."""
    lines = []
    if limit.rss_mib is not None and peak.rss_mib > limit.rss_mib:
        lines.append(f"peak RSS {_mib(peak.rss_mib)} of the process tree exceeds the limit of "
                     f"{_mib(limit.rss_mib)}")
    gpu = peak.gpu_total()
    if limit.vram_mib is not None:
        if gpu is None:
            return lines  # no GPU memory to measure here: a vram limit cannot be exceeded
        if gpu > limit.vram_mib:
            devices = ", ".join(f"GPU {i}: {_mib(v)}" for i, v in sorted((peak.gpu_mib or {}).items()) if v)
            lines.append(f"peak GPU memory {_mib(gpu)} ({devices}) exceeds the limit of "
                         f"{_mib(limit.vram_mib)}")
    return lines
