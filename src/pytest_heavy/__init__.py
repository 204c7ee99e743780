"""pytest-heavy: tiers, hardware gating and process isolation for GPU-heavy test suites.

The public types are the ones its hooks hand out or expect (``pytest_heavy_unit_finish``'s record,
``pytest_heavy_make_launcher``'s launcher) and the ones a plugin reads from a session (the settings,
the hardware snapshot, an item's needs). They are imported on first use: pytest imports this package
for every session (the entry point is ``pytest_heavy.plugin``), and a session that did not opt in must
pay for nothing more than that module.

PYTEST_DONT_REWRITE: isolated children import this package before pytest configures its assertion
rewriting, and pytest would warn that it cannot rewrite it (an error under ``-W error``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .hardware import GPU, Hardware
    from .isolation.launch.base import Launcher, Started, UnitRequest
    from .isolation.schedule.base import Job, Placement, Scheduler
    from .markers import Needs
    from .report import HeavyRecord
    from .settings import Settings

_WHERE = {
    "GPU": "hardware", "Hardware": "hardware",
    "HeavyRecord": "report",
    **dict.fromkeys(("Job", "Placement", "Scheduler"), "isolation.schedule.base"),
    **dict.fromkeys(("Launcher", "Started", "UnitRequest"), "isolation.launch.base"),
    "Needs": "markers",
    "Settings": "settings",
}

__all__ = ["GPU", "Hardware", "HeavyRecord", "Job", "Launcher", "Needs", "Placement", "Scheduler", "Settings",
           "Started", "UnitRequest"]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'pytest_heavy' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
