"""How a project hooks pytest-heavy in.

Installing the package activates the plugin (entry point ``heavy``); configuration lives in the
``[tool.pytest.ini_options]`` table of pyproject.toml (``heavy_*`` keys). This conftest adds only
what this repository's own tests need.
"""

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture
def heavy_pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester whose sessions see no GPU and a 16 GiB machine, whatever machine runs the suite."""
    pytester.makeini("[pytest]\nheavy_ram_gib = 4\n")
    monkeypatch.setenv("PYTEST_HEAVY_ASSUME", "gpus=0,ram=16GiB")
    monkeypatch.delenv("CICD", raising=False)
    monkeypatch.delenv("COVERAGE_FILE", raising=False)  # a tox env's: generated sessions keep their own
    return pytester
