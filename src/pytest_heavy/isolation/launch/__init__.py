"""How a child starts: spawn, fork or forkserver, behind one ``Launcher`` protocol.

``resolve`` turns ``auto`` into the fastest method that is safe in this parent right now:
forkserver when ``heavy_preload`` is set (the modules share heavy imports that a fork of a parent
without them would pay per child), else fork when the parent is single-threaded without a CUDA
context, else spawn. Spawn is always available as the fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from ...settings import Settings
from .base import Launcher, RefusedError, Started, UnitRequest, fork_unsafe_reason

if TYPE_CHECKING:  # the launchers themselves are imported when a run needs them, not at session start
    from .forkserver import ForkserverLauncher


def wants_forkserver(settings: Settings) -> bool:
    """Whether to start the server before collection (it must preload while pytest collects)."""
    return settings.start == "forkserver" or (settings.start == "auto" and bool(settings.preload))


def resolve(settings: Settings, forkserver: ForkserverLauncher | None) -> str:
    if settings.start != "auto":
        return settings.start
    if forkserver is not None:  # heavy_preload named the shared heavy imports: pay them once, not per child
        return "forkserver"
    return "fork" if fork_unsafe_reason() is None else "spawn"


class Launchers:
    """The chosen launcher plus spawn, the fallback every other method may need.

    Each comes from the ``pytest_heavy_make_launcher`` hook when a plugin provides one (a test's fake,
    a remote launcher), else from this package.
    """

    def __init__(self, session: pytest.Session, method: str, forkserver: ForkserverLauncher | None,
                 note: Callable[[str], None]) -> None:
        self.method = method
        self.note = note
        self._fallback_noted = False
        self._forkserver = forkserver
        from .fork import ForkLauncher
        from .spawn import SpawnLauncher

        capture = session.config.option.capture != "no"
        builtin: dict[str, Callable[[], Launcher]] = {
            "spawn": lambda: SpawnLauncher(session.config, capture),
            "fork": lambda: ForkLauncher(session, capture),
        }
        if forkserver is not None:
            builtin["forkserver"] = lambda: forkserver
        self.found: dict[str, Launcher] = {}
        for name in {"spawn", method}:
            made = session.config.hook.pytest_heavy_make_launcher(config=session.config, method=name)
            self.found[name] = made if made is not None else builtin[name]()
        if forkserver is not None and self.found.get("forkserver") is not forkserver:
            forkserver.close()  # started before collection, but a plugin's launcher replaced it

    def start(self, request: UnitRequest) -> tuple[str, Started]:
        """Start a child with the chosen method; spawn where fork is unsafe now or the server refuses."""
        method = self.method
        if method == "fork":
            unsafe = fork_unsafe_reason()
            if unsafe:
                method = "spawn"
                if not self._fallback_noted:
                    self._fallback_noted = True
                    self.note(f"fork is unsafe here ({unsafe}); children start with spawn")
        launcher = self.found[method]
        try:
            started = launcher.start(request)
        except RefusedError as exc:  # the forkserver could not fork safely: spawn instead
            if exc.final:
                self.method = "spawn"
                self.note(f"{method} failed ({exc}); children start with spawn")
            else:
                self.note(f"{method} refused ({exc}); {request.unit} starts with spawn")
            return "spawn", self.found["spawn"].start(request)
        if launcher is self._forkserver and self._forkserver is not None:
            for failure in self._forkserver.take_preload_failures():
                self.note(f"ini heavy_preload: the forkserver could not import {failure}; "
                          "it goes on without it")
        return method, started

    def close(self) -> None:
        for launcher in self.found.values():
            launcher.close()
