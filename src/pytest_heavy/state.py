"""The per-session state shared by the hooks, kept in ``config.stash``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pytest

from .hardware import Hardware
from .settings import Settings

if TYPE_CHECKING:
    from .gating import GatedReports
    from .memory import GpuReader
    from .report import HeavyRecord


@dataclass
class Run:
    settings: Settings
    hardware: Hardware
    gated: GatedReports | None = None  # the tests gating skipped, counted by the reason they report
    tier_deselected: int = 0  # slow tests the tiers deselected
    records: list[HeavyRecord] = field(default_factory=list)  # heavy table rows, in finishing order
    report_extra: dict[str, Any] = field(default_factory=dict)  # more top-level keys of --heavy-report
    schedule: str = ""  # the packing scheduler's summary line under the heavy table
    template: Any = None  # isolation.launch.template.TemplateLauncher, forked at session start
    template_missing: str = ""  # why no template was forked where one was wanted
    in_xdist_workers: set[str] = field(default_factory=set)  # heavy modules pytest-xdist workers ran
    _gpu: GpuReader | None = None
    _gpu_opened: bool = False

    def gpu(self) -> GpuReader | None:
        """NVML handles for the visible GPUs, opened on first use; None without real GPUs."""
        if not self._gpu_opened:
            from .memory import GpuReader  # only sessions that run children need it: keep start-up light

            self._gpu_opened = True
            self._gpu = GpuReader.open(self.hardware)
        return self._gpu


RUN = pytest.StashKey[Run]()
