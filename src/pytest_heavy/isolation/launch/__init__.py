"""How a child starts: template, fork or spawn, behind one ``Launcher`` protocol.

``auto`` starts children from the template (``template.py``): a process forked from pytest at session
start, before any test module was imported, and again right after a test module's import of a package
such as torch while pytest is still safe to fork (``snapshot.py``), which so holds what the heavy
modules use, imported once, and forks a child per module. Where it cannot (no fork on this platform,
CUDA initialized at configure time, a package whose import starts an OpenMP pool), a child is forked
from the parent itself where that is safe now (``../threads.py``: no CUDA context, no OpenMP pool, no
Python thread started since the session began), else spawned. Spawn is always available as the last
fallback, and the heavy table says why a child did not start with the first choice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from ...settings import Settings
from ...state import RUN
from .. import session_state, terminal

__all__ = ["Launchers", "resolve"]

if TYPE_CHECKING:  # imported when a run needs them: forking the template at session start stays cheap
    from .base import Launcher, RefusedError, Started, UnitRequest
    from .template import TemplateLauncher


def resolve(settings: Settings) -> str:
    """The method each child is tried with first: ``auto`` tries the template (``Launchers`` falls back)."""
    return "template" if settings.start == "auto" else settings.start


class Launchers:
    """The chosen launcher plus its fallbacks, tried in order for each child: under ``auto``, the
    template, then fork, then spawn; a method asked for by name, then spawn.

    Each comes from the ``pytest_heavy_make_launcher`` hook when a plugin provides one (a test's fake,
    a remote launcher), else from this package; a fallback is made the first time it is needed.
    """

    def __init__(self, session: pytest.Session, method: str, template: TemplateLauncher | None,
                 note: Callable[[str], None], template_missing: str = "") -> None:
        self.method = method
        terminal.remember(session.config)
        session_state.register_parent(session.config)  # before any child reports its state
        self.forced = session.config.stash[RUN].settings.start == method  # not resolved from auto
        self.chain = ["template", "fork", "spawn"] if method == "template" and not self.forced else [method]
        if method != "spawn" and self.chain[-1] != "spawn":
            self.chain.append("spawn")
        self.note = note
        self._session = session
        self._noted = False
        self._said = ""  # why the previous child did not start with the first choice
        self._template = template
        self._dead: dict[str, str] = {}  # method -> why it can start no child at all
        if method == "template" and template is None:
            self._dead["template"] = f"no template process ({template_missing or 'not started'})"
        self.found: dict[str, Launcher] = {}
        self._own: dict[str, bool] = {}  # whether this package made it (a plugin's may not know staging)
        for name in {"spawn", method}:
            if name not in self._dead:
                self.launcher(name)

    def launcher(self, name: str) -> Launcher:
        """The launcher for ``name``, made the first time it is asked for."""
        if name not in self.found:
            config = self._session.config
            made = config.hook.pytest_heavy_make_launcher(config=config, method=name)
            self.found[name] = made if made is not None else self._builtin(name)
            self._own[name] = made is None
        return self.found[name]

    def _builtin(self, name: str) -> Launcher:
        capture = self._session.config.option.capture != "no"
        if name == "fork":
            from .fork import ForkLauncher

            return ForkLauncher(self._session, capture)
        if name == "spawn":
            from .spawn import SpawnLauncher

            return SpawnLauncher(self._session.config, capture)
        assert self._template is not None, "the template is chosen only when one was started"
        return self._template

    def _refused(self, name: str, exc: RefusedError) -> str:
        """Why ``name`` refused this child; a final refusal takes it out of the chain for good."""
        why = f"{name} refused ({str(exc).splitlines()[0] if str(exc) else 'no reason given'})"
        if exc.final:
            self._dead[name] = why
            self.note(f"{why}; no later child starts with it")
        return why

    def start(self, request: UnitRequest) -> tuple[str, Started, str]:
        """Start a child with the first method of the chain that can; returns the method used, the
        child, and why it is not the first choice ('' when it is, and when the previous child fell
        back for the same reason: an OpenMP pool refuses every later fork, and the heavy table names
        it once, not under every module)."""
        from .base import RefusedError, fork_unsafe_reason

        reasons: list[str] = []
        for name in self.chain:
            if name in self._dead:
                reasons.append(self._dead[name])
                continue
            unsafe = fork_unsafe_reason() if name == "fork" and name != self.chain[-1] else None
            if unsafe:
                reasons.append(f"fork is unsafe here ({unsafe})")
                continue
            launcher = self.launcher(name)
            try:
                started = launcher.start(request)
            except RefusedError as exc:
                if name == self.chain[-1]:
                    raise
                reasons.append(self._refused(name, exc))
                continue
            return name, started, self._used(name, reasons)
        raise AssertionError("spawn, the last method of every chain, never refuses")

    def stage(self, request: UnitRequest) -> tuple[str, Started, str] | None:
        """Start a staged child (``request.staged``) with the first choice of the chain, as ``start``
        would; None where that is not our template or spawn (a fork of the parent, made now, would
        carry the running child's reader threads; a plugin's launcher may not wait for ``go``) or it
        refused: the child starts at its turn, and ``start`` falls back as usual."""
        from .base import RefusedError

        name = self.chain[0]
        if name not in ("template", "spawn") or name in self._dead:
            return None
        launcher = self.launcher(name)
        if not self._own[name]:
            return None
        try:
            started = launcher.start(request)
        except RefusedError:
            return None
        return name, started, self._used(name, [])

    def _used(self, name: str, reasons: list[str]) -> str:
        """A child started with ``name`` after ``reasons`` refused it the methods before: what the
        heavy table shows of them (said once while they stay the same)."""
        self._say(name, reasons)
        why = "; ".join(reasons)
        shown, self._said = ("" if why == self._said else why), why
        return shown

    def _say(self, name: str, reasons: list[str]) -> None:
        """Once: the first choice was asked for by name and cannot be used; the template could not
        import an explicit heavy_preload module."""
        if reasons and self.forced and not self._noted:
            self._noted = True
            self.note(f"{reasons[0]}; children start with {name}")
        if name == "template" and self._template is not None:
            for failure in self._template.take_preload_failures():
                self.note(f"ini heavy_preload: the template process could not import {failure}; "
                          "it goes on without it")

    def close(self) -> None:
        for launcher in self.found.values():
            launcher.close()
        if self._template is not None and self._template not in self.found.values():
            self._template.close()  # started at session start, never used or replaced by a plugin's
