"""Automatic preload: the packages each heavy module pulls in, imported once by the template.

While pytest collects, each module's import is watched: the top-level packages that appeared in
``sys.modules`` during it, from outside the project (site-packages: torch, transformers...), are what
its child would import again. As soon as a collected module looks heavy (an isolation marker on the
module or on one of its functions, or ``heavy_isolate = always``), its packages go to the template,
which imports them while the parent goes on collecting; a module whose marks only its class methods
carry is caught at the end of collection. ``heavy_preload`` names more, up front.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from ... import supervise
from ...markers import closest
from ...state import Run
from .template import TemplateLauncher, unavailable_reason


def start_template(config: pytest.Config, run: Run) -> None:
    """Fork the template (idle until a heavy module is collected) and watch collection for it."""
    missing = unavailable_reason()
    if missing:
        run.template_missing = missing
        return
    env = supervise.child_environment(run.settings, run.hardware, isolated=True)
    run.template = TemplateLauncher(config, config.option.capture != "no", run.settings.preload, env)
    config.pluginmanager.register(Preloads(config, run, run.template), "heavy-preloads")


def external_packages(names: set[str], root: Path) -> list[str]:
    """The top-level packages among ``names`` (modules that just appeared) that live outside ``root``:
    the project's own test modules and conftests are collected by each child, not preloaded."""
    found = []
    for name in sorted({n.partition(".")[0] for n in names}):
        module = sys.modules.get(name)
        origin = getattr(module, "__file__", None)
        if module is None or name.startswith("_") or not origin:
            continue
        if not Path(os.path.abspath(origin)).is_relative_to(root):
            found.append(name)
    return found


class Preloads:
    """Registered in the parent while a template exists: records and sends each module's packages."""

    def __init__(self, config: pytest.Config, run: Run, template: TemplateLauncher) -> None:
        self._root = config.rootpath
        self._markers = set(run.settings.isolate_markers)
        self._always = run.settings.isolate == "always"
        self._template = template
        self._packages: dict[str, list[str]] = {}  # module node id -> packages its import brought

    @pytest.hookimpl(wrapper=True)
    def pytest_make_collect_report(self, collector: pytest.Collector) -> Generator[None, Any, Any]:
        if not isinstance(collector, pytest.Module):
            return (yield)
        before = set(sys.modules)
        report = yield
        new = set(sys.modules) - before
        packages = external_packages(new, self._root) if new else []
        if packages:
            self._packages[collector.nodeid] = packages
            if self._always or any(self._heavy(node) for node in [collector, *(report.result or ())]):
                self._template.preload(packages)
        return report

    def _heavy(self, node: pytest.Item | pytest.Collector) -> bool:
        return not self._markers.isdisjoint(closest(node))

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        """Modules whose isolation marks sit deeper than their functions (a class's methods)."""
        if not self._packages:
            return
        for item in items:
            module = item.nodeid.split("::", 1)[0]
            if module in self._packages and self._heavy(item):
                self._template.preload(self._packages.pop(module))
