"""The per-session state shared by the hooks, kept in ``config.stash``."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from .hardware import Hardware
from .settings import Settings


@dataclass
class Run:
    settings: Settings
    hardware: Hardware
    gated: dict[str, list[str]] = field(default_factory=dict)  # reason group -> node ids skipped


RUN = pytest.StashKey[Run]()
