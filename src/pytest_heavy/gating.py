"""Gating: pure functions from (needs, settings, hardware) to a skip reason.

Decided at collection so fixtures of a skipped test never run, and phrased so that every skip says
what the test needs and what the probe saw. ``verdict`` is the one rule book: the collection hook
applies it to each item's needs record (``markers.needs``) and ``pytest-heavy doctor`` to each
marker's, so the two never disagree.

A test the project's own ``skip``/``skipif`` marks skip first is skipped with the project's reason,
not ours (pytest reports the first skip): ``GatedReports`` counts a gated test as ours only when its
report carries our reason, so the summary's counts are the reasons ``-rs`` shows.
"""

from __future__ import annotations

import importlib.util

import pytest

from .hardware import Hardware
from .markers import Needs
from .settings import Settings

CICD_QUALITATIVE_REASON = "CICD=1: qualitative tests are skipped in CI"
APPLE_MPS_NOTE = ("Apple MPS is present, but GPU markers ask for CUDA GPUs "
                  "(heavy_apple_mps_is_gpu = true lets one-GPU tests run on it)")


def verdict(needs: Needs, settings: Settings, hw: Hardware) -> str | None:
    """Why a test with these needs is skipped here, or None when it runs."""
    reason = hardware_reason(needs, settings, hw)
    if reason is None and settings.cicd and needs.qualitative:
        reason = CICD_QUALITATIVE_REASON
    return reason


def apple_mps_runs(needs: Needs, settings: Settings, hw: Hardware) -> bool:
    """Whether a GPU test runs on Apple silicon's MPS device: one GPU, no VRAM amount, opted in."""
    return settings.apple_mps_is_gpu and hw.apple_mps and needs.gpus == 1 and needs.vram_gib is None


def hardware_reason(needs: Needs, settings: Settings, hw: Hardware) -> str | None:
    """What the test needs that this machine lacks (GPUs, VRAM, RAM, packages), or None."""
    if needs.gpus and not settings.ignore_gpu_check:
        if not hw.gpus:
            if apple_mps_runs(needs, settings, hw):
                pass
            elif hw.apple_mps:
                return f"needs a GPU ({needs.gpu_marker}): {hw.no_gpu_reason()}; {APPLE_MPS_NOTE}"
            else:
                return f"needs a GPU ({needs.gpu_marker}): {hw.no_gpu_reason()}"
        elif needs.gpus > len(hw.gpus):
            mark = needs.gpus_marker
            shown = f"requires_gpu(count={needs.gpus})" if mark == "requires_gpu" else f"{mark}({needs.gpus})"
            return f"needs {needs.gpus} GPUs ({shown}): {len(hw.gpus)} visible"
        elif needs.vram_gib is not None:
            best = max(hw.gpus, key=lambda g: g.total_mib)
            if best.total_gib < needs.vram_gib:
                return (f"needs a GPU with {needs.vram_gib:g} GiB ({needs.vram_marker}): largest visible GPU "
                        f"has {best.total_gib:.1f} GiB ({best.name})")
    if needs.ram_gib is not None and not settings.ignore_ram_check:
        have = hw.ram_total_mib / 1024
        if have < needs.ram_gib:
            source = f"{needs.ram_marker}, heavy_ram_gib" if needs.ram_default else needs.ram_marker
            return f"needs {needs.ram_gib:g} GiB RAM ({source}): this machine has {have:.1f} GiB"
    for marker, package in needs.packages:
        if not importable(package):
            return (f"needs {package} ({marker} marker): the {package} package is not installed "
                    f"(heavy_marker_packages)")
    return None


def importable(package: str) -> bool:
    """Whether ``package`` could be imported here, found without importing it (a dotted name imports
    its parents, as ``find_spec`` must)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def reason_group(reason: str) -> str:
    """The part of a reason shared by many tests: 'needs a GPU (NVML unavailable: ...)'."""
    head, sep, detail = reason.partition(": ")
    if not head.startswith("needs ") or not sep:
        return reason
    return f"{head.split(' (', 1)[0]} ({detail})"


class GatedReports:
    """Counts the gated tests whose skip is really ours, by the reason their report carries.

    Registered at collection only when gating skipped something; ``gated`` maps a reason group to the
    node ids skipped with our reason, ``theirs`` lists those the project's own marks skipped first.
    """

    def __init__(self, reasons: dict[str, str]) -> None:
        self.reasons = reasons  # node id -> our reason
        self.gated: dict[str, list[str]] = {}
        self.theirs: list[str] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        ours = self.reasons.get(report.nodeid)
        if ours is None or report.when != "setup" or not report.skipped:
            return
        shown = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        if shown.removeprefix("Skipped: ") == ours:
            self.gated.setdefault(reason_group(ours), []).append(report.nodeid)
        else:
            self.theirs.append(report.nodeid)
