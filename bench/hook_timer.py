"""A pytest plugin (``-p hook_timer``) that accounts for the CPU time pytest-heavy's own code takes.

Why: on a shared machine two whole runs differ by 10-30% from noise alone, far more than the 3% idle
target, so the figure also adds up what the plugin itself costs, which noise hardly moves: the import
of ``pytest_heavy.plugin`` (done here, timed, before pytest loads the entry point and finds it imported)
and the CPU time inside every hook implementation pytest-heavy registers, its configure-time probe
included. Wrappers are timed before and after their ``yield`` only, so the wrapped work (the test
itself) is not charged. Totals go to ``$BENCH_HOOK_TIMES`` as JSON when the process exits.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from collections.abc import Callable, Generator
from typing import Any

import pytest

_t0 = time.process_time()
import pytest_heavy.plugin  # noqa: E402, F401  (the import is what is timed)

IMPORT_S = time.process_time() - _t0
TIMES: dict[str, list[float]] = {}  # "module: hook name" -> [seconds, calls]
_wrapped: set[int] = set()


def _module(plugin: object) -> str:
    """The module a plugin comes from: itself, or its class's module for plugin objects."""
    name = getattr(plugin, "__name__", None)
    return name if isinstance(name, str) else type(plugin).__module__


def _timed_call(fn: Callable[..., Any], slot: list[float]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        t = time.process_time()
        try:
            return fn(*args, **kwargs)
        finally:
            slot[0] += time.process_time() - t
            slot[1] += 1

    return call


def _timed_wrapper(fn: Callable[..., Any], slot: list[float]) -> Callable[..., Any]:
    """A generator proxy: times each resumption of the wrapper, passes values and exceptions through."""

    def proxy(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        inner = fn(*args, **kwargs)
        slot[1] += 1
        t = time.process_time()
        try:
            value = next(inner)
        finally:
            slot[0] += time.process_time() - t
        while True:
            failure: BaseException | None = None
            try:
                sent = yield value
            except BaseException as exc:  # pluggy throws the hook's exception into wrappers
                failure = exc
            t = time.process_time()
            try:
                value = inner.throw(failure) if failure is not None else inner.send(sent)
            except StopIteration as stop:
                return stop.value
            finally:
                slot[0] += time.process_time() - t

    return proxy


def pytest_plugin_registered(plugin: object, plugin_name: str, manager: pytest.PytestPluginManager) -> None:
    """Historic: called for every plugin, earlier ones included; wraps pytest-heavy's implementations."""
    module = _module(plugin)
    if not module.startswith("pytest_heavy"):
        return
    for caller in vars(manager.hook).values():
        for impl in getattr(caller, "_hookimpls", ()):
            if impl.plugin is plugin and id(impl) not in _wrapped:
                _wrapped.add(id(impl))
                slot = TIMES.setdefault(f"{module.removeprefix('pytest_heavy.')}: {caller.name}", [0.0, 0])
                timed = _timed_wrapper if impl.wrapper or impl.hookwrapper else _timed_call
                impl.function = timed(impl.function, slot)


@atexit.register
def _dump() -> None:
    path = os.environ.get("BENCH_HOOK_TIMES")
    if path:
        with open(path, "w") as fh:
            json.dump({"import_s": IMPORT_S, "hooks": TIMES}, fh)
