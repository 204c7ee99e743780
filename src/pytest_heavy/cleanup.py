"""Memory cleanup where it buys something (CI mode, or heavy_cleanup = always), and the heap freeze.

What it can free: Python objects kept alive only by reference cycles (``gc.collect()``) and tensors
the caching allocator holds but no longer uses (``torch.cuda.empty_cache()``). What it cannot free:
the CUDA context itself (hundreds of MiB per process), memory still referenced by module globals
or caches, and memory fragmented inside the allocator. Only process exit returns those; that is
what heavy-module isolation is for.

Where: after each test that carries a heavy or GPU marker, after the last test of a module that had
one (its module-scope fixtures are gone then), and after any test once this process holds a CUDA
context. Ordinary tests free their objects by reference counting, and a full collection on a heap
holding a large ML library costs 80-400 ms, so they get none.

The freeze: once collection is done, ``gc.freeze()`` moves the session's long-lived objects (imported
libraries, test modules, items) out of every later collection's way. Full collections still come,
from plugins (hypothesis's at the session's end), pytest's own (unraisable-exception checks at
unconfigure) and the interpreter's at exit, and each walked all of torch: on a 2-core machine, 0.8 s
of a 3 s torch suite and 1 s of a 10,000-test one. What it costs: an object that already existed
then and later becomes garbage only through a reference cycle stays until the process exits, and
``gc.get_objects``/``get_referrers`` no longer see it, so ``--heavy-find-leaks`` (which walks them)
turns the freeze off. It is this process's state, so a session nested in another (pytester's inline
runs) leaves it alone, and so do isolated children (their module is gone when they exit) unless
cleanup is on, as before. Where it is on, the heap is also frozen each time a template process is
forked from pytest (``before_fork``): the two share every page until one writes it, and a full
collection in pytest writes to every object it walks, copying each page the template shares. Frozen,
those objects are neither walked nor copied: torch's import, whose two full collections took 43 ms
and 61 ms beside a template forked at session start, takes 15 ms and 37 ms for them.

Torch is never imported here: ``empty_cache`` runs only when a test already imported torch and
CUDA is already initialized in this process, so cleanup never creates a CUDA context.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Generator

import pytest

from .markers import gpu_markers
from .settings import Settings

FREEZE = "heavy-freeze"  # the plugin's name: registered where the freeze is on


def cuda_initialized() -> bool:
    """Whether this process already holds a CUDA context through torch (without creating one)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    try:
        return bool(torch.cuda.is_initialized())
    except Exception:  # a half-imported or stubbed torch
        return False


def collect() -> None:
    gc.collect()
    if cuda_initialized():
        sys.modules["torch"].cuda.empty_cache()


def after_which(items: list[pytest.Item], heavy_markers: set[str]) -> set[str]:
    """The node ids after whose teardown a collection is worth it: heavy/GPU-marked tests, and the last
    test of every module that holds one."""
    wanted: set[str] = set()
    heavy_modules: set[str] = set()
    last_of_module: dict[str, str] = {}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        last_of_module[module] = item.nodeid
        if any(mark.name in heavy_markers for mark in item.iter_markers()):
            wanted.add(item.nodeid)
            heavy_modules.add(module)
    wanted.update(last_of_module[module] for module in heavy_modules)
    return wanted


class Freeze:
    """Freezes the heap once collection is done (see the module's docstring)."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self) -> None:
        # No gc.collect() first: on a torch suite it found ~100 garbage objects, for 20-100 ms.
        gc.freeze()


def before_fork(config: pytest.Config) -> None:
    """A template is about to be forked from this process: freeze what it will share (module docstring)."""
    if config.pluginmanager.has_plugin(FREEZE):
        gc.freeze()


class Cleanup:
    """Registered only when cleanup is on: a session without it pays no per-test hook."""

    def __init__(self, heavy_markers: set[str]) -> None:
        self.heavy_markers = heavy_markers
        self.after: set[str] = set()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.after = after_which(session.items, self.heavy_markers)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> Generator[None, None, None]:
        try:
            return (yield)
        finally:
            if item.nodeid in self.after or cuda_initialized():
                collect()


def register(config: pytest.Config, settings: Settings, nested: bool) -> None:
    """``nested``: another pytest session is running in this process (pytester's inline runs)."""
    if not nested and not settings.find_leaks and (settings.cleanup or not settings.child):
        config.pluginmanager.register(Freeze(), FREEZE)
    if settings.cleanup:
        ram = (name for name, kind in settings.resource_markers if kind == "ram")
        heavy = {*settings.isolate_markers, *gpu_markers(settings), "requires_heavy_ram", *ram}
        config.pluginmanager.register(Cleanup(heavy), "heavy-cleanup")
