"""Who keeps memory: the large objects (bytes, buffers, arrays, tensors) alive on the heap, and the
first module global or pytest fixture that holds each, found by climbing ``gc.get_referrers``.

Pure analysis of this process's object graph, with no pytest hooks: the leak finder (``leaks``)
decides when to look and what counts as kept. Every walk over the heap is bounded by a deadline the
caller gives: on a large heap the answer may be partial, and the result says so.
"""

from __future__ import annotations

import gc
import sys
import time
import types
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

MIN_OBJECT_BYTES = 1 << 20  # smaller objects are not searched for
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


def mib_text(nbytes: float) -> str:
    """``nbytes`` as the leak lines write it: whole MiB, or GiB from 1 GiB on."""
    mib = nbytes / (1 << 20)
    return f"{mib:,.0f} MiB" if mib < 1024 else f"{mib / 1024:,.1f} GiB"


@dataclass
class Holder:
    """What one holder keeps: the new large objects whose referrer chains reach it, summed."""

    holder: str
    what: str  # the holder's type, or how a fixture holds it
    objects: int = 0
    mib: float = 0.0
    kinds: dict[str, int] = field(default_factory=dict)
    devices: list[str] = field(default_factory=list)

    def text(self) -> str:
        kinds = ", ".join(f"{n} {kind}{'s' if n > 1 else ''}" for kind, n in sorted(self.kinds.items()))
        where = "" if self.devices == ["cpu"] else f" on {', '.join(self.devices)}"
        return f"{self.holder} ({self.what}, {kinds} of {mib_text(self.mib * (1 << 20))}{where})"


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
