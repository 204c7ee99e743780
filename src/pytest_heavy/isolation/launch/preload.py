"""Automatic preload: the packages test modules import reach the children without a second import.

While pytest collects a test module, a finder placed first on ``sys.meta_path`` sees each top-level
package an import reaches for the first time; one from outside the project and the standard library
(torch, transformers...) is noted. Once its import has finished (the next ``import`` statement to
return, or the module's collection, with no import of outside code still in progress on the stack),
the template is brought up to date in one of two ways:

- while pytest is still safe to fork (``threads.py``: no OpenMP pool, no CUDA, no Python thread
  started since the session began), a new template is forked from pytest right there, holding the
  package already, and the old one retired (``snapshot.py``): no second import at all;
- once it is not (a module built a large tensor at import, and the pool runs), the template is told
  the package's name and imports it itself, on another core.

It is done for every test module, as whether a module is heavy is only known once it has been
imported. ``heavy_preload`` names more, up front: the template imports those whatever happens.
"""

from __future__ import annotations

import builtins
import importlib.abc
import sys
from collections.abc import Callable, Generator
from typing import Any

import pytest

from ...state import Run
from .snapshot import Project, SessionStart, forget_collection, importing_outside
from .template import TemplateLauncher, unavailable_reason


def start_template(config: pytest.Config, run: Run) -> None:
    """Fork the template (it configures the children's session beside collection) and watch
    collection for the packages test modules import."""
    missing = unavailable_reason()
    if missing:
        run.template_missing = missing
        return
    def env() -> dict[str, str]:  # called in the template: pytest never imports supervise (psutil) for it
        from ... import supervise

        return supervise.child_environment(run.settings, run.hardware, isolated=True)

    start = SessionStart.now(config.rootpath)
    run.template = TemplateLauncher(config, config.option.capture != "no", run.settings.preload, env)
    config.pluginmanager.register(Preloads(config, run, start), "heavy-preloads")


class Spotter(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path`` while a test module is collected: notes each package from outside the
    project that an import reaches for the first time, and hands the names on (``imported``) once their
    imports have finished. It finds nothing itself (``None``): the import goes on as usual. The end of
    an import is seen through ``builtins.__import__``, wrapped while a test module is collected: every
    ``import`` statement that returns while a name waits asks whether the waiting imports are over
    (about 1% of torch's import time, spent only while collecting)."""

    def __init__(self, project: Project, imported: Callable[[list[str]], None]) -> None:
        self._project = project
        self._imported = imported
        self._seen: set[str] = set()
        self._waiting: list[str] = []
        self._import: Any = None  # the __import__ we wrapped, while we wrap it
        self._watching: Any = None  # our wrapper
        self._handing_on = False  # our own imports then (forking a snapshot) are not the test module's

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if path is not None or self._handing_on or name in self._seen or name in sys.stdlib_module_names:
            return None  # a submodule, already judged, or the standard library (cheap, often loaded)
        self._seen.add(name)
        spec = self._spec(name, target)
        origin = spec.origin if spec is not None else None
        if origin and origin not in ("built-in", "frozen") and not self._project.owns(origin):
            self._waiting.append(name)
        return None

    def _spec(self, name: str, target: Any) -> Any:
        """The spec the finders after us give ``name`` (the one the import will use)."""
        finders = sys.meta_path[sys.meta_path.index(self) + 1:] if self in sys.meta_path else sys.meta_path
        for finder in finders:
            find = getattr(finder, "find_spec", None)
            try:
                spec = find(name, None, target) if find is not None else None
            except Exception:  # whatever the real import would say, it says it
                return None
            if spec is not None:
                return spec
        return None

    def wrap(self) -> None:
        """Watch ``import`` statements (from before the first one that reaches a package: its own
        return is the moment to see)."""
        if self._import is not None:
            return
        self._import = original = builtins.__import__

        def watching(*args: Any, **kwargs: Any) -> Any:
            try:
                return original(*args, **kwargs)
            finally:
                if self._waiting and not self._handing_on and self._settled():
                    self.flush()

        builtins.__import__ = self._watching = watching

    def _settled(self) -> bool:
        """Whether every waiting import has finished (or failed), and no outside import is in progress."""
        for name in self._waiting:
            module = sys.modules.get(name)
            if module is not None and getattr(getattr(module, "__spec__", None), "_initializing", False):
                return False
        return not importing_outside(self._project)

    def flush(self) -> None:
        """Hand on the waiting names whose import succeeded."""
        names = [name for name in self._waiting if name in sys.modules]
        self._waiting.clear()
        if names and not self._handing_on:
            self._handing_on = True
            try:
                self._imported(names)
            finally:
                self._handing_on = False

    def unwrap(self) -> None:
        if self._import is not None and builtins.__import__ is self._watching:  # not a test's own patch
            builtins.__import__ = self._import
        self._import = self._watching = None


class Preloads:
    """Registered in the parent while a template exists: spots the packages test modules import and
    brings the template up to date (a snapshot while pytest is safe to fork, else a preload)."""

    def __init__(self, config: pytest.Config, run: Run, start: SessionStart) -> None:
        self._config = config
        self._run = run
        self._start = start
        self._spotter = Spotter(start.project, self.imported)

    def imported(self, names: list[str]) -> None:
        """Test module code just finished importing ``names`` (from outside the project)."""
        from .base import fork_unsafe_reason

        template: TemplateLauncher = self._run.template
        new = [name for name in names if name not in template.sent]
        if not new:
            return
        if fork_unsafe_reason() is None:
            try:
                self._run.template = template.snapshot(self._forget)
                return
            except OSError:  # no fork now (EAGAIN, ENOMEM): the test module's import must not fail for it
                pass
        template.preload(new)

    def _forget(self) -> None:
        """In the snapshot: stop watching imports, and forget what collection imported."""
        self._spotter.unwrap()
        if self._spotter in sys.meta_path:
            sys.meta_path.remove(self._spotter)
        forget_collection(self._start, self._config)

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector) -> Generator[None, Any, Any]:
        if not isinstance(collector, pytest.Module):
            return (yield)
        sys.meta_path.insert(0, self._spotter)
        self._spotter.wrap()
        try:
            return (yield)
        finally:
            sys.meta_path.remove(self._spotter)
            self._spotter.unwrap()
            self._spotter.flush()  # imports the module's code made without an import statement returning
            if self._run.template is not None:  # unless this module's import made a snapshot (configuring)
                self._run.template.configure()
