"""How a project hooks pytest-heavy in.

Installing the package activates the plugin (entry point ``heavy``); configuration lives in the
``[tool.pytest.ini_options]`` table of pyproject.toml (``heavy_*`` keys). This conftest adds only
what this repository's own tests need.
"""

import json
import os
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

FAKES = Path(__file__).resolve().parent / "fakes"
FAKE_H100 = {"uuid": "GPU-aaaaaaaa-1111-2222-3333-444444444444", "name": "NVIDIA H100 80GB HBM3",
             "total_mib": 81559, "used_mib": 4, "compute_mode": 0}

# The dev dependency group installs plugins users combine pytest-heavy with: every generated session runs
# next to them (heavy_pytester blocks pytest-randomly, whose reshuffling would defeat comparisons of
# two runs, and the plugins only test_fidelity2.py uses, for their start-up cost), and test_plugins.py
# drives each on purpose. Tests that compare a session with and without pytest-heavy (test_optin.py)
# block them all, so only pytest-heavy can make a difference; a plugin that is not installed is ignored.
OTHER_PLUGINS = ("randomly", "rerunfailures", "asyncio", "xdist", "xdist.looponfail", "timeout",
                 "pytest_forked", "pytest-split", "hypothesispytest", "syrupy", "benchmark")


@pytest.fixture
def no_other_plugins(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """Generated sessions (in this process or not) load no third-party plugin but pytest-heavy and
    pytest-cov. After ``pytester``, which clears PYTEST_ADDOPTS when it starts."""
    blocked = " ".join(f"-p no:{name}" for name in OTHER_PLUGINS)
    monkeypatch.setenv("PYTEST_ADDOPTS", f"{os.environ.get('PYTEST_ADDOPTS', '')} {blocked}".strip())


@pytest.fixture
def heavy_pytester(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A pytester whose sessions see no GPU and a 16 GiB machine, whatever machine runs the suite.

    Generated sessions keep their collection order: pytest-randomly (in the dev tools) would
    reshuffle them, and tests compare outcomes, order and output of two runs. A test that wants
    randomly enables it on its own command line (``-p randomly``), as test_fidelity2.py does the plugins
    blocked here for their start-up cost alone (hypothesis, syrupy, pytest-benchmark: ~0.4 s a session).
    """
    pytester.makeini("[pytest]\nheavy_ram_gib = 4\n")
    # pytest-asyncio (dev group) warns in every session whose ini leaves its loop scope unset.
    monkeypatch.setenv("PYTEST_ADDOPTS", "-p no:randomly -o asyncio_default_fixture_loop_scope=function "
                       "-p no:hypothesispytest -p no:syrupy -p no:benchmark")
    monkeypatch.setenv("PYTEST_HEAVY_ASSUME", "gpus=0,ram=16GiB")
    monkeypatch.delenv("CICD", raising=False)
    monkeypatch.delenv("COVERAGE_FILE", raising=False)  # a tox env's: generated sessions keep their own
    return pytester


@pytest.fixture
def fake_gpu(heavy_pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """Sessions that see one H100 through the fake NVML (test/fakes/pynvml.py on their PYTHONPATH, so
    run them with ``runpytest_subprocess`` and ``-p pynvml``); a test there can "create a context" of a
    known size with ``pynvml.fake_create_context(os.getpid(), 0, used_mib=...)``."""
    path = [str(FAKES), os.environ.get("PYTHONPATH")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, path)))
    monkeypatch.setenv("FAKE_PYNVML", json.dumps({"devices": [FAKE_H100]}))
    monkeypatch.setenv("PYTEST_HEAVY_ASSUME", "ram=16GiB")  # the GPU comes from the probe
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_release_timeout_s = 0\n")
    return heavy_pytester
