"""Gating: pure functions from (markers, settings, hardware) to a skip reason.

Decided at collection so fixtures of a skipped test never run, and phrased so that every skip says
what the test needs and what the probe saw. ``verdict`` is the one rule book: the collection hook
applies it to each item and ``pytest-heavy doctor`` to each marker, so the two never disagree.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Mapping

import pytest

from .hardware import Hardware
from .settings import Settings

CICD_QUALITATIVE_REASON = "CICD=1: qualitative tests are skipped in CI"


def vram_gib(mark: pytest.Mark) -> float:
    """The GiB asked for by ``requires_vram(24)`` or ``requires_vram(gb=24)``."""
    value = mark.kwargs.get("gb", mark.args[0] if mark.args else None)
    try:
        gib = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"requires_vram expects a number of GiB, e.g. requires_vram(24); "
                         f"got {value!r}") from None
    if gib <= 0:
        raise ValueError(f"requires_vram expects a positive number of GiB; got {value!r}")
    return gib


def gpu_count(mark: pytest.Mark) -> int:
    """The GPUs asked for by ``requires_gpu(count=2)`` or ``requires_gpu(2)``; 1 without an argument."""
    value = mark.kwargs.get("count", mark.args[0] if mark.args else 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"requires_gpu expects a whole number of GPUs >= 1, e.g. requires_gpu(count=2); "
                         f"got {value!r}")
    return value


def gpu_markers(settings: Settings) -> tuple[str, ...]:
    """Every marker that implies a GPU: ours, then the project's (ini ``heavy_gpu_markers``)."""
    return ("requires_gpu", "requires_vram", *settings.gpu_markers)


def gpu_marker(marker_names: Iterable[str], settings: Settings) -> str | None:
    """The first marker that implies a GPU, or None."""
    return next((m for m in gpu_markers(settings) if m in marker_names), None)


def verdict(by_name: Mapping[str, pytest.Mark], settings: Settings, hw: Hardware) -> str | None:
    """Why a test with these marks (each name's closest: ``markers.closest``) is skipped here, or None
    when it runs.

    Raises ValueError for a mark that cannot be read (``requires_vram("lots")``).
    """
    reason = hardware_reason(by_name, settings, hw)
    if reason is None and settings.cicd and "qualitative" in by_name:
        reason = CICD_QUALITATIVE_REASON
    return reason


def hardware_reason(by_name: Mapping[str, pytest.Mark], settings: Settings, hw: Hardware) -> str | None:
    """What the test needs that this machine lacks (GPU, VRAM, RAM, vllm), or None."""
    gpu = gpu_marker(by_name, settings)
    if gpu and not settings.ignore_gpu_check:
        if not hw.gpus:
            return f"needs a GPU ({gpu}): {hw.no_gpu_reason()}"
        count = gpu_count(by_name["requires_gpu"]) if "requires_gpu" in by_name else 1
        if count > len(hw.gpus):
            return f"needs {count} GPUs (requires_gpu(count={count})): {len(hw.gpus)} visible"
        if "requires_vram" in by_name:
            need = vram_gib(by_name["requires_vram"])
            best = max(hw.gpus, key=lambda g: g.total_mib)
            if best.total_gib < need:
                return (f"needs a GPU with {need:g} GiB (requires_vram): largest visible GPU has "
                        f"{best.total_gib:.1f} GiB ({best.name})")
    if "requires_heavy_ram" in by_name and not settings.ignore_ram_check:
        have = hw.ram_total_mib / 1024
        if have < settings.ram_gib:
            return (f"needs {settings.ram_gib:g} GiB RAM (requires_heavy_ram, heavy_ram_gib): "
                    f"this machine has {have:.1f} GiB")
    if "vllm" in by_name and importlib.util.find_spec("vllm") is None:
        return "needs vllm (vllm marker): the vllm package is not installed"
    return None


def reason_group(reason: str) -> str:
    """The part of a reason shared by many tests: 'needs a GPU (NVML unavailable: ...)'."""
    head, sep, detail = reason.partition(": ")
    if not head.startswith("needs ") or not sep:
        return reason
    return f"{head.split(' (', 1)[0]} ({detail})"
