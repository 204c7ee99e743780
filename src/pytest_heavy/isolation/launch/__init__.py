"""How a child starts: spawn, fork or forkserver, behind one ``Launcher`` protocol.

``resolve`` turns ``auto`` into the fastest method: forkserver when ``heavy_preload`` is set (the
modules share heavy imports that a fork of a parent without them would pay per child), else fork;
before each fork ``Launchers.start`` checks that the parent has no CUDA context and no threads
started since the session began, and starts that child with spawn otherwise (the heavy table says
why). Spawn is always available as the fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from ...settings import Settings
from ...state import RUN
from .base import Launcher, RefusedError, Started, UnitRequest, fork_unsafe_reason, record_thread_baseline

__all__ = ["Launcher", "Launchers", "record_thread_baseline", "resolve", "wants_forkserver"]

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
    return "fork"  # checked before every child: one that cannot fork safely starts with spawn, and says why


class Launchers:
    """The chosen launcher plus spawn, the fallback every other method may need.

    Each comes from the ``pytest_heavy_make_launcher`` hook when a plugin provides one (a test's fake,
    a remote launcher), else from this package.
    """

    def __init__(self, session: pytest.Session, method: str, forkserver: ForkserverLauncher | None,
                 note: Callable[[str], None]) -> None:
        self.method = method
        self.forced = session.config.stash[RUN].settings.start == method  # not resolved from auto
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

    def start(self, request: UnitRequest) -> tuple[str, Started, str]:
        """Start a child with the chosen method; spawn where fork is unsafe now or the server refuses.
        Returns the method used, the child, and why it is not the chosen one ('' when it is)."""
        method, why = self.method, ""
        if method == "fork":
            unsafe = fork_unsafe_reason()
            if unsafe:
                method, why = "spawn", f"fork is unsafe here ({unsafe})"
                if self.forced and not self._fallback_noted:  # asked for by name: say so at once
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
            why = f"{method} refused ({str(exc).splitlines()[0] if str(exc) else 'no reason given'})"
            return "spawn", self.found["spawn"].start(request), why
        if launcher is self._forkserver and self._forkserver is not None:
            for failure in self._forkserver.take_preload_failures():
                self.note(f"ini heavy_preload: the forkserver could not import {failure}; "
                          "it goes on without it")
        return method, started, why

    def close(self) -> None:
        for launcher in self.found.values():
            launcher.close()
