"""How a child starts: spawn, fork or forkserver, behind one ``Launcher`` protocol.

``resolve`` turns ``auto`` into the fastest method that is safe in this parent right now:
forkserver when ``heavy_preload`` is set (the modules share heavy imports that a fork of a parent
without them would pay per child), else fork when the parent is single-threaded without a CUDA
context, else spawn. Spawn is always available as the fallback.
"""

from __future__ import annotations

import pytest

from ..settings import Settings
from .base import Launcher, fork_unsafe_reason
from .fork import ForkLauncher
from .forkserver import ForkserverLauncher
from .spawn import SpawnLauncher


def wants_forkserver(settings: Settings) -> bool:
    """Whether to start the server before collection (it must preload while pytest collects)."""
    return settings.start == "forkserver" or (settings.start == "auto" and bool(settings.preload))


def resolve(settings: Settings, forkserver: ForkserverLauncher | None) -> str:
    if settings.start != "auto":
        return settings.start
    if forkserver is not None:  # heavy_preload named the shared heavy imports: pay them once, not per child
        return "forkserver"
    return "fork" if fork_unsafe_reason() is None else "spawn"


def launchers(session: pytest.Session, method: str,
              forkserver: ForkserverLauncher | None) -> dict[str, Launcher]:
    """The chosen launcher plus spawn, the fallback every other method may need."""
    capture = session.config.option.capture != "no"
    found: dict[str, Launcher] = {"spawn": SpawnLauncher(session.config, capture)}
    if method == "fork":
        found["fork"] = ForkLauncher(session, capture)
    if forkserver is not None:
        found["forkserver"] = forkserver
    return found
