"""Automatic preload: the packages test modules import, imported once by the template.

While pytest imports a test module, a finder placed first on ``sys.meta_path`` sees each top-level
package the import reaches for the first time. One from outside the project and the standard library
(torch, transformers...) is named to the template at once, which imports it while the parent does the
same: the children then start with it loaded, and the parent's collection does not wait for a second
import after its own. It is done for every test module, as whether a module is heavy is only known once
it has been imported; a package that only light modules use is imported by the template for nothing,
beside the parent's collection (and the template is killed at the end). ``heavy_preload`` names more,
up front.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from ...state import Run
from .template import TemplateLauncher, unavailable_reason


def start_template(config: pytest.Config, run: Run) -> None:
    """Fork the template (idle until a test module imports a package) and watch collection for it."""
    missing = unavailable_reason()
    if missing:
        run.template_missing = missing
        return
    def env() -> dict[str, str]:  # called in the template: pytest never imports supervise (psutil) for it
        from ... import supervise

        return supervise.child_environment(run.settings, run.hardware, isolated=True)

    run.template = TemplateLauncher(config, config.option.capture != "no", run.settings.preload, env)
    config.pluginmanager.register(Preloads(config, run.template), "heavy-preloads")


class Spotter(importlib.abc.MetaPathFinder):
    """First on ``sys.meta_path`` while a test module is imported: the moment that import starts on a
    package from outside the project (torch), the template is told, and imports it beside the parent
    instead of after it. It finds nothing itself (``None``): the import goes on as usual."""

    def __init__(self, root: Path, template: TemplateLauncher) -> None:
        self._root = root
        self._template = template
        self._seen: set[str] = set()

    def find_spec(self, name: str, path: Any, target: Any = None) -> None:
        if path is not None or name in self._seen or name in sys.stdlib_module_names:
            return None  # a submodule, already judged, or the standard library (cheap, often loaded)
        self._seen.add(name)
        try:
            spec = importlib.machinery.PathFinder.find_spec(name)
        except Exception:  # whatever the real import would say, it says it
            return None
        origin = spec.origin if spec is not None else None
        if origin and origin not in ("built-in", "frozen") and not Path(origin).resolve().is_relative_to(
                self._root):
            self._template.preload([name])
        return None


class Preloads:
    """Registered in the parent while a template exists: spots the packages test modules import."""

    def __init__(self, config: pytest.Config, template: TemplateLauncher) -> None:
        self._spotter = Spotter(config.rootpath.resolve(), template)

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector) -> Generator[None, Any, Any]:
        if not isinstance(collector, pytest.Module):
            return (yield)
        sys.meta_path.insert(0, self._spotter)
        try:
            return (yield)
        finally:
            sys.meta_path.remove(self._spotter)
