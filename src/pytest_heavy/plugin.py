"""pytest's entry point: declares the options and decides, once, whether pytest-heavy acts in this session.

The options and ini keys are always declared (so a project's configuration parses and ``--help`` lists
them), but nothing else happens unless the project or the run opted in (``settings.enabled``). Only then
is the rest of the package imported and its hooks registered, as plugin objects: ``session.HeavySession``
and each concern's own. A session that did not opt in pays for this module's import, one header line
and nothing per test.
"""

from __future__ import annotations

import os

import pytest

from . import hooks
from .settings import ASSUME_ENV, ENABLE_ENV, add_options, enabled, load

DISABLED = pytest.StashKey[str]()  # what kept pytest-heavy off, for the one header line
MPS_IGNORED = pytest.StashKey[str]()  # a per-user MPS directory or daemon left alone: not this user's
SESSIONS: list[pytest.Config] = []  # the sessions configured in this process now: more than one inline


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    pluginmanager.add_hookspecs(hooks)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    SESSIONS.append(config)
    on, why = enabled(config)
    if not on:
        config.stash[DISABLED] = why
        return
    from . import assume, cleanup, hardware, markers
    from .examples import plugin as examples
    from .gpu import mps
    from .memattr import plugin as memattr
    from .session import HeavySession
    from .split import plugin as split
    from .state import RUN, Run

    settings = load(config)
    markers.register(config, markers.configured(settings))
    hw = hardware.from_env() if settings.child else None
    if hw is None:
        # Before the probe, which then sees the daemon, and before any CUDA client.
        if (ignored := mps.adopt(os.environ)) is not None:
            config.stash[MPS_IGNORED] = ignored
        try:
            hw = assume.probe(settings.assume or None)
        except assume.AssumeError as exc:
            source = "--heavy-assume" if config.option.heavy_assume else ASSUME_ENV
            raise pytest.UsageError(f"{source} {settings.assume!r}: {exc}") from None
    run = config.stash[RUN] = Run(settings=settings, hardware=hw)
    config.pluginmanager.register(HeavySession(config, run), "heavy-session")
    # Concerns that keep per-session state register a plugin object of their own, when they have work.
    for concern in (split, examples, memattr):
        concern.register(config, run)
    if hw.gpus:  # without a GPU (real or assumed) no test can create a CUDA context: nothing to guard
        from .gpu import guard

        guard.register(config, run)
    cleanup.register(config, settings, nested=len(SESSIONS) > 1)


def pytest_unconfigure(config: pytest.Config) -> None:
    if config in SESSIONS:
        SESSIONS.remove(config)


def pytest_report_header(config: pytest.Config) -> list[str]:
    why = config.stash.get(DISABLED, None)
    if why is None:  # on: the session object says what the probe saw
        ignored = config.stash.get(MPS_IGNORED, None)
        return [] if ignored is None else [f"heavy: {ignored}"]
    return [f"heavy: off ({why}); enable with heavy_enabled = true in the pytest configuration, "
            f"a --heavy-* option or {ENABLE_ENV}=1"]
