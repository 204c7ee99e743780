"""What stays project code: its own plumbing, and the old option names its CI scripts still pass."""

import os

import pytest

ALIASES = {"--skip-resource-checks": "heavy_skip_resource_checks", "--run-slow": "heavy_run_slow"}


@pytest.fixture
def backend():
    """The project's own plumbing: which vLLM to talk to."""
    return os.environ.get("VLLM_URL", "http://localhost:8000")


def pytest_addoption(parser):
    for name, dest in ALIASES.items():
        parser.addoption(name, action="store_true", help=f"alias of --{dest.replace('_', '-')}")


@pytest.hookimpl(tryfirst=True)  # before pytest-heavy reads its options
def pytest_configure(config):
    for name, dest in ALIASES.items():
        if config.getoption(name):
            setattr(config.option, dest, True)
