"""Collection of example scripts: a plain directory walk that never imports them, one item per file
with a ``# pytest:`` header. The header grammar is imported once a file in an examples directory is
seen, the runner (``item.py``: subprocess, psutil, supervision) once an example is collected, so
sessions without examples never load either."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from ..state import RUN, Run


class ExamplesPlugin:
    """The collection hooks: example directories are walked, never imported."""

    def __init__(self, config: pytest.Config, run: Run) -> None:
        self.dirs = [config.rootpath / d for d in run.settings.examples_dirs]

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
        from .header import find_header

        found = find_header(file_path)
        if found is not None:
            kept.append(ExampleFile.from_parent(parent, path=file_path, header_line=found[0],
                                                header_text=found[1]))
        return kept


class ExampleFile(pytest.File):
    """An example script: one item, ``<path>::example`` (or ``<path>::<file name>`` with
    ``heavy_example_ids = file``, the id hand-written runners give); the header is parsed here, never the
    code."""

    def __init__(self, *, header_line: int, header_text: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.header_line = header_line
        self.header_text = header_text

    def collect(self) -> Iterable[pytest.Item]:
        from .header import HeaderError, parse_header

        where = f"{self.nodeid}:{self.header_line}"
        # pytest warns about an unregistered marker; say where it is instead of pointing at this module.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                header = parse_header(self.header_line, self.header_text)
            except HeaderError as exc:
                raise self.CollectError(f"{where}: bad '# pytest:' header: {exc}") from None
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, str(self.path), self.header_line)
        from . import item as runner  # the runner's imports are paid only where there are examples

        runner.count_reports(self.config)
        name = self.path.name if self.config.stash[RUN].settings.example_ids == "file" else "example"
        item = runner.ExampleItem.from_parent(self, name=name, header=header)
        for mark in header.marks:
            item.add_marker(mark)
        if header.skip is not None:
            item.add_marker(pytest.mark.skip(reason=header.skip))
        yield item


def register(config: pytest.Config, run: Run) -> None:
    """Only where an examples directory exists: other projects' sessions get no collection hook."""
    plugin = ExamplesPlugin(config, run)
    if any(d.is_dir() for d in plugin.dirs):
        config.pluginmanager.register(plugin, "heavy-examples")
