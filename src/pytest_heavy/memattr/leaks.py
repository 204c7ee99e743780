"""``--heavy-find-leaks``: run everything in one process on purpose, and name, per module, the memory
still held after its last test's teardown and what holds it.

After a module's last teardown (its module fixtures are finalized by then), ``gc.collect()``,
``torch.cuda.empty_cache()`` where CUDA is already up and ``malloc_trim`` give back what can be given
back; what the process tree still holds above the module's starting point is what the module keeps.
To say who keeps it, the large objects (bytes, buffers, arrays, tensors) alive now and not before the
module are climbed up through ``gc.get_referrers`` to the first module global or pytest fixture that
holds them. Every walk over the heap is bounded in time: on a large heap the answer may be partial,
and the row says so.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import time
import types
from collections.abc import Generator, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import pytest

from .. import cleanup, markers
from ..examples.item import ExampleItem
from ..markers import module_of
from ..state import Run
from .sampler import Reading, read_tree

MIN_OBJECT_BYTES = 1 << 20  # smaller objects are not searched for
MIN_KEPT_MIB = 16.0  # a module keeping less is reported as keeping nothing
SEARCH_S = 5.0  # bound on one module's search for holders (snapshot, enumeration, climbing)
MAX_DEPTH = 8  # referrer hops from a large object to its holder


@dataclass(slots=True)
class Big:
    """A large object found on the heap (slots: the only referrer of ``obj`` we create is this object)."""

    obj: Any
    nbytes: int
    device: str  # "cpu" or "cuda:0"...
    kind: str  # "bytes object", "tensor", "array"...
    via: list[tuple[Any, Any]]  # (tracked container, what it holds: obj, or an untracked tuple/dict with obj)


def nbytes_of(obj: Any) -> tuple[int, str, str, int] | None:
    """(bytes, device, kind, identity) of a large buffer-owning object, else None.

    ``identity`` dedupes views: a tensor's storage pointer, an array's own id. Only ``type(obj)`` is
    looked at before an object is known to be a buffer: ``isinstance`` and ``hasattr`` would run
    arbitrary ``__class__``/``__getattr__`` code (one of torch's initializes CUDA).
    """
    cls = type(obj)
    if cls is bytes or cls is bytearray:
        return len(obj), "cpu", "bytes object" if cls is bytes else "bytearray", id(obj)
    torch = sys.modules.get("torch")
    tensor = getattr(torch, "Tensor", None) if torch is not None else None
    if isinstance(tensor, type) and issubclass(cls, tensor):
        try:
            storage = obj.untyped_storage()
            device = obj.device
            name = device.type if device.index is None else f"{device.type}:{device.index}"
            return int(storage.nbytes()), name, "tensor", int(storage.data_ptr())
        except Exception:  # sparse, meta or fake tensors have no plain storage
            return None
    numpy = sys.modules.get("numpy")
    ndarray = getattr(numpy, "ndarray", None) if numpy is not None else None
    if isinstance(ndarray, type) and issubclass(cls, ndarray):
        if obj.base is not None:
            return None  # a view: its base owns the memory
        return int(obj.nbytes), "cpu", "array", id(obj)
    return None


def _held(container: Any) -> Iterator[tuple[Any, Any]]:
    """(object, what ``container`` holds that leads to it): its referents, and the contents of untracked
    tuples and dicts among them. The collector stops tracking a tuple or dict of atomic values (a
    fixture's ``cached_result`` of bytes, a dict of buffers), and ``gc.get_referrers`` never returns
    an untracked container, so they are looked into here."""
    for ref in gc.get_referents(container):
        yield ref, ref
        if (type(ref) is tuple or type(ref) is dict) and not gc.is_tracked(ref):
            for inner in (ref.values() if type(ref) is dict else ref):
                yield inner, ref


def large_objects(deadline: float) -> tuple[dict[int, Big], bool]:
    """Every large object held by a tracked container: ({identity: Big}, whether the walk finished
    before ``deadline``)."""
    found: dict[int, Big] = {}
    for container in gc.get_objects():
        if time.monotonic() > deadline:
            return found, False
        for obj, holds in _held(container):
            sized = nbytes_of(obj)
            if not sized or sized[0] < MIN_OBJECT_BYTES:
                continue
            big = found.get(sized[3])
            if big is None:
                big = found[sized[3]] = Big(obj, sized[0], sized[1], sized[2], [])
            if big.obj is obj and len(big.via) < 8:
                big.via.append((container, holds))
    return found, True


def _module_dicts() -> dict[int, str]:
    """id(module.__dict__) -> module name, for every imported module."""
    return {id(vars(m)): name for name, m in list(sys.modules.items())
            if issubclass(type(m), types.ModuleType)}


def _named(ref: Any, child: Any, modules: dict[int, str]) -> tuple[str, str] | None:
    """(who, what) when ``ref`` is a module's globals or a pytest fixture definition, else None."""
    if id(ref) in modules:
        key = next((k for k, v in list(ref.items()) if v is child), "?")
        return f"module global `{modules[id(ref)]}.{key}`", type(child).__name__
    if type(ref).__name__ == "FixtureDef":
        return f"fixture `{ref.argname}`", f"{ref.scope} scope, still set up"
    return None


def holder_of(big: Big, modules: dict[int, str], ignore: set[int], deadline: float) -> tuple[str, str] | None:
    """(who, what) of the first module global or fixture on a referrer chain of ``big.obj`` (breadth
    first): ("module global `pkg.mod._CACHE`", "dict"), or None when none is found in time."""
    frontier: list[Any] = []
    seen = {id(big.obj)}
    ignore.add(id(frontier))
    for container, holds in big.via:
        named = _named(container, holds, modules)
        if named:
            return named
        if id(container) not in seen:
            seen.add(id(container))
            frontier.append(container)
    for _ in range(MAX_DEPTH):
        following: list[Any] = []
        ignore.add(id(following))
        for obj in frontier:
            if time.monotonic() > deadline:
                return None
            for ref in gc.get_referrers(obj):
                if id(ref) in ignore or id(ref) in seen or type(ref) in (types.FrameType, Big):
                    continue
                seen.add(id(ref))
                named = _named(ref, obj, modules)
                if named:
                    return named
                following.append(ref)
        ignore.discard(id(frontier))
        frontier = following
        if not frontier:
            return None
    return None


def _mib(nbytes: float) -> str:
    mib = nbytes / (1 << 20)
    return f"{mib:,.0f} MiB" if mib < 1024 else f"{mib / 1024:,.1f} GiB"


@dataclass
class Holder:
    holder: str
    what: str  # the holder's type, or how a fixture holds it
    objects: int = 0
    mib: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)

    def text(self) -> str:
        kinds = ", ".join(f"{n} {kind}{'s' if n > 1 else ''}" for kind, n in sorted(self.kinds.items()))
        where = "" if self.devices == ["cpu"] else f" on {', '.join(self.devices)}"
        return f"{self.holder} ({self.what}, {kinds} of {_mib(self.mib * (1 << 20))}{where})"


@dataclass
class LeakRow:
    module: str
    heavy: bool
    kept_rss_mib: float
    kept_gpu_mib: float | None
    holders: list[Holder] = field(default_factory=list)
    complete: bool = True  # the holder search finished within its time bound

    def kept(self) -> bool:
        return self.kept_rss_mib >= MIN_KEPT_MIB or (self.kept_gpu_mib or 0.0) >= MIN_KEPT_MIB

    def text(self) -> str:
        if not self.kept():
            return f"{self.module} keeps nothing after teardown (less than {MIN_KEPT_MIB:.0f} MiB)"
        amounts = []
        if self.kept_rss_mib >= MIN_KEPT_MIB:
            amounts.append(_mib(self.kept_rss_mib * (1 << 20)) + " of RAM")
        if (self.kept_gpu_mib or 0.0) >= MIN_KEPT_MIB:
            amounts.append(_mib((self.kept_gpu_mib or 0.0) * (1 << 20)) + " of GPU memory")
        holders = "; ".join(h.text() for h in self.holders) or (
            "no large object found holding it (many small objects, or memory outside Python objects)")
        partial = "" if self.complete else f" (search stopped after {SEARCH_S:g}s: holders may be missing)"
        return f"{self.module} keeps {' and '.join(amounts)} after teardown: {holders}{partial}"


def trim_malloc() -> None:
    """Give freed heap pages back to the system, so RSS shows only what is still referenced.

    ``CDLL(None)`` is the process's own symbol table, libc included; only glibc has ``malloc_trim``.
    """
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def settle() -> None:
    cleanup.collect()
    trim_malloc()


class LeakFinder:
    """Per module, in the one pytest process: a starting point, then what is kept after the module."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.rows: list[dict[str, Any]] = []  # JSON rows, in module order
        self.lines: list[str] = []
        self._module: str | None = None
        self._start = Reading()
        self._before: set[int] = set()
        self._before_complete = True
        self._heavy = False
        self._item: pytest.Item | None = None

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item,
                                nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
        if isinstance(item, ExampleItem):  # a process of its own: it cannot keep anything in ours
            return (yield)
        module = module_of(item)
        if module != self._module:
            settle()
            self._module, self._heavy = module, False
            self._start = read_tree_here(self.run)
            before, self._before_complete = large_objects(time.monotonic() + SEARCH_S)
            self._before = set(before)
            del before
        self._heavy |= bool(markers.names(item) & set(self.run.settings.isolate_markers))
        self._item = item
        try:
            return (yield)
        finally:
            self._item = None

    def module_done(self, module: str) -> None:
        """The module's fixtures are finalized; its last test's ``funcargs`` still point at their values
        (pytest drops them only after the whole teardown, session fixtures included): dropped here so
        a released fixture value does not count as kept."""
        if self._item is not None and getattr(self._item, "funcargs", None):
            self._item.funcargs = {}  # type: ignore[attr-defined]
        self.finish_module(module)

    def finish_module(self, module: str) -> None:
        settle()
        end = read_tree_here(self.run)
        start_gpu, end_gpu = self._start.gpu_total(), end.gpu_total()
        row = LeakRow(module, self._heavy, round(end.rss_mib - self._start.rss_mib, 1),
                      None if end_gpu is None else round(end_gpu - (start_gpu or 0.0), 1))
        if row.kept():
            row.holders, row.complete = holders(self._before, time.monotonic() + SEARCH_S)
            row.complete = row.complete and self._before_complete  # else old objects may look new
        self._module = None
        self._before = set()
        if row.heavy or row.kept():
            self.rows.append(asdict(row))
            self.lines.append(row.text())

    def pytest_report_header(self) -> str:
        return "heavy: --heavy-find-leaks: every module runs in this process, on purpose"

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        terminalreporter.write_sep("-", "memory kept after teardown (pytest-heavy --heavy-find-leaks)")
        for line in self.lines or ["no module keeps memory after its teardown"]:
            terminalreporter.write_line(line)


FINDER = pytest.StashKey[LeakFinder]()


@pytest.fixture(scope="module", autouse=True)
def _heavy_leak_probe(request: pytest.FixtureRequest) -> Iterator[None]:
    """Where a module ends: torn down right after the module's own fixtures (autouse, so set up first
    and finalized last of its scope) and before any session fixture, so the last module's figure is
    not lowered by what the session's teardown gives back. This module is registered as a plugin
    (only with --heavy-find-leaks) for this fixture alone."""
    yield
    request.config.stash[FINDER].module_done(module_of(request.node))


def read_tree_here(run: Run) -> Reading:
    return read_tree(os.getpid(), run.gpu())


def holders(before: Iterable[int], deadline: float) -> tuple[list[Holder], bool]:
    """Group the large objects that appeared since ``before`` by what holds them, largest first."""
    found, complete = large_objects(deadline)
    known = set(before)
    new = [big for key, big in found.items() if key not in known]
    del found
    modules = _module_dicts()
    ignore = {id(new), id(modules), id(known)}
    by_holder: dict[str, Holder] = {}
    for big in sorted(new, key=lambda b: -b.nbytes):
        found_holder = holder_of(big, modules, ignore, deadline)
        if found_holder is None:
            complete = complete and time.monotonic() <= deadline
            continue
        entry = by_holder.setdefault(found_holder[0], Holder(*found_holder))
        entry.objects += 1
        entry.mib += big.nbytes / (1 << 20)
        entry.kinds[big.kind] = entry.kinds.get(big.kind, 0) + 1
        if big.device not in entry.devices:
            entry.devices.append(big.device)
    for entry in by_holder.values():
        entry.mib = round(entry.mib, 1)
    return sorted(by_holder.values(), key=lambda h: -h.mib), complete
