"""How a child starts: spawn, fork or forkserver, behind one ``Launcher`` protocol.

``resolve`` turns ``auto`` into fork: the parent has collected every module and imported what they
import (torch included), so its fork has nothing left to pay. Before each fork ``Launchers.start``
checks that the parent holds no CUDA context and no thread a child would wait for (``../threads.py``:
an OpenMP pool, a Python thread started since the session began); where it does, the child starts
with the forkserver when ``heavy_preload`` is set (it has the heavy imports already), else with
spawn, and the heavy table says why. Spawn is always available as the last fallback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from ...settings import Settings
from ...state import RUN
from .base import Launcher, RefusedError, Started, UnitRequest, fork_unsafe_reason

__all__ = ["Launcher", "Launchers", "resolve"]

if TYPE_CHECKING:  # the launchers themselves are imported when a run needs them, not at session start
    from .forkserver import ForkserverLauncher


def resolve(settings: Settings) -> str:
    """The method each child is tried with first: ``auto`` tries fork (``Launchers`` falls back)."""
    return "fork" if settings.start == "auto" else settings.start


class Launchers:
    """The chosen launcher plus its fallbacks: spawn always, and under ``auto`` the forkserver started
    before collection (``heavy_preload``) for the children fork cannot start safely.

    Each comes from the ``pytest_heavy_make_launcher`` hook when a plugin provides one (a test's fake,
    a remote launcher), else from this package; a fallback is made the first time it is needed.
    """

    def __init__(self, session: pytest.Session, method: str, forkserver: ForkserverLauncher | None,
                 note: Callable[[str], None]) -> None:
        self.method = method
        self.forced = session.config.stash[RUN].settings.start == method  # not resolved from auto
        self.fallback = "forkserver" if method == "fork" and not self.forced and forkserver else "spawn"
        self.note = note
        self._session = session
        self._fallback_noted = False
        self._unsafe_said: str | None = None  # why the previous child could not fork
        self._forkserver = forkserver
        self.found: dict[str, Launcher] = {}
        for name in {"spawn", method}:
            self.launcher(name)

    def launcher(self, name: str) -> Launcher:
        """The launcher for ``name``, made the first time it is asked for."""
        if name not in self.found:
            config = self._session.config
            made = config.hook.pytest_heavy_make_launcher(config=config, method=name)
            self.found[name] = made if made is not None else self._builtin(name)
        return self.found[name]

    def _builtin(self, name: str) -> Launcher:
        capture = self._session.config.option.capture != "no"
        if name == "fork":
            from .fork import ForkLauncher

            return ForkLauncher(self._session, capture)
        if name == "spawn":
            from .spawn import SpawnLauncher

            return SpawnLauncher(self._session.config, capture)
        assert self._forkserver is not None, "forkserver is chosen only when one was started"
        return self._forkserver

    def fork_or_fallback(self) -> tuple[str, str]:
        """fork where it is safe now, else the fallback and why."""
        unsafe, said = fork_unsafe_reason(), self._unsafe_said
        self._unsafe_said = unsafe
        if not unsafe:
            return "fork", ""
        if self.forced and not self._fallback_noted:  # asked for by name: say so at once
            self._fallback_noted = True
            self.note(f"fork is unsafe here ({unsafe}); children start with spawn")
        return self.fallback, "" if unsafe == said else f"fork is unsafe here ({unsafe})"

    def start(self, request: UnitRequest) -> tuple[str, Started, str]:
        """Start a child with the chosen method; the fallback where fork is unsafe now, spawn where
        the server refuses. Returns the method used, the child, and why it is not the chosen one
        ('' when it is, and when the previous child fell back for the same reason: an OpenMP pool
        refuses every later fork, and the heavy table names it once, not under every module)."""
        method, why = self.fork_or_fallback() if self.method == "fork" else (self.method, "")
        launcher = self.launcher(method)
        try:
            started = launcher.start(request)
        except RefusedError as exc:  # the forkserver could not fork safely: spawn instead
            if exc.final:  # never again: the fallback, or the chosen method
                if method == self.fallback:
                    self.fallback = "spawn"
                else:
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
        if self._forkserver is not None and self._forkserver not in self.found.values():
            self._forkserver.close()  # started before collection, never used or replaced by a plugin's
