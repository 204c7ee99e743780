"""Collection of example scripts: a plain directory walk that never imports them, one item per file
with a ``# pytest:`` header, and the heavy-table rows of the examples this session ran."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ..report import HeavyRecord
from ..state import Run
from .header import find_header
from .item import RUNNING, ExampleFile


class ExamplesPlugin:
    """The collection hooks, and the heavy-table rows of the examples run in this session."""

    def __init__(self, config: pytest.Config, run: Run) -> None:
        self.dirs = [config.rootpath / d for d in run.settings.examples_dirs]
        self.running: dict[str, HeavyRecord] = config.stash.setdefault(RUNNING, {})

    def inside(self, path: Path) -> bool:
        return any(path == d or path.is_relative_to(d) for d in self.dirs)

    @pytest.hookimpl(tryfirst=True)
    def pytest_collect_directory(self, path: Path, parent: pytest.Collector) -> pytest.Collector | None:
        # A plain directory, never a Package: Package.setup() imports __init__.py in the parent.
        return pytest.Dir.from_parent(parent, path=path) if self.inside(path) else None

    @pytest.hookimpl(wrapper=True)
    def pytest_collect_file(self, file_path: Path, parent: pytest.Collector) -> Any:
        collected = yield
        if file_path.suffix != ".py" or not self.inside(file_path):
            return collected
        # pytest's Module (and DoctestModule) would import the file: examples and their helpers never are.
        kept = [c for c in collected if not isinstance(c, pytest.Module)]
        found = find_header(file_path)
        if found is not None:
            kept.append(ExampleFile.from_parent(parent, path=file_path, header_line=found[0],
                                                header_text=found[1]))
        return kept

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        record = self.running.get(report.nodeid)
        if record is not None:
            record.count(report)


def register(config: pytest.Config, run: Run) -> None:
    config.pluginmanager.register(ExamplesPlugin(config, run), "heavy-examples")
