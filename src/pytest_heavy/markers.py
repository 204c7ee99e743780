"""The marker registry, each node's closest marks, and each item's needs record.

Registering every documented marker keeps ``--strict-markers`` runs clean; ``docs/markers.md`` is the
long form. ``needs`` reads an item's marks once into a ``Needs`` record (tier, GPUs, VRAM and RAM
amounts, packages, isolation) and checks their arguments there: gating, the plan, the scheduler and
``doctor`` all read that record, so a bad argument is the same usage error whatever the machine.
"""

from __future__ import annotations

import math
from collections.abc import KeysView, Mapping
from dataclasses import dataclass

import pytest

from .settings import Settings

MARKERS: dict[str, str] = {
    "qualitative": "checks output quality (slower, model-dependent); skipped when CICD=1; "
                   "the fast tier is -m 'not qualitative'",
    "slow": "long-running; deselected by default, run with -m slow or --heavy-run-slow",
    "requires_gpu(count=1)": "needs count CUDA GPUs (probed through NVML); skipped with the reason "
                             "otherwise; --heavy-workers auto pins the module's child to that many GPUs",
    "requires_vram(gib)": "needs a visible GPU with at least gib GiB of total memory",
    "requires_heavy_ram(gib=heavy_ram_gib)": "needs gib GiB of host RAM (default: ini heavy_ram_gib); its "
                                              "module runs in its own process",
    "requires_gpu_isolation": "its module runs in its own child process (GPU memory freed at exit)",
    "huggingface": "uses HuggingFace models; implies a GPU (heavy_gpu_markers)",
    "vllm": "uses vLLM; needs a GPU and the vllm package (heavy_marker_packages); its module runs in its own "
            "process",
}


def documented() -> set[str]:
    """The names of the markers above, without their signatures (``requires_vram``)."""
    return {spec.split("(")[0] for spec in MARKERS}


def register(config: pytest.Config, extra: tuple[str, ...] = ()) -> None:
    """Register the documented markers plus any project marker named in the heavy_* ini keys."""
    known = documented()
    for spec, help_ in MARKERS.items():
        config.addinivalue_line("markers", f"{spec}: {help_}")
    for name in extra:
        if name not in known:
            known.add(name)
            config.addinivalue_line("markers", f"{name}: project marker listed in a heavy_* ini key")


def configured(settings: Settings) -> tuple[str, ...]:
    """The project markers its heavy_* ini keys name, registered beside ours."""
    return (*settings.gpu_markers, *settings.isolate_markers, *(m for m, _ in settings.resource_markers),
            *(m for m, _ in settings.marker_packages))


_NO_MARKS: dict[str, pytest.Mark] = {}  # the session's inherited marks: one object, so its answer is kept too
_CLOSEST = pytest.StashKey[tuple[int, dict[str, pytest.Mark], dict[str, pytest.Mark]]]()


def closest(node: pytest.Item | pytest.Collector) -> dict[str, pytest.Mark]:
    """Each marker name on ``node`` with its closest mark (the item's own before its class's and module's).

    Tiers, gating, planning and limits all ask, and building every item's answer from all the marks of
    its node chain is what reading markers costs: each node's answer is kept in its stash and built
    from its parent's, so a module's and a class's marks are read once for all their tests. It is
    rebuilt when a mark was added to the node since (gating's skip changes ``own_markers``) or its
    parent's answer changed.
    """
    own = node.own_markers
    inherited = closest(node.parent) if node.parent is not None else _NO_MARKS
    stash = node.stash
    if _CLOSEST in stash:  # a hit costs no exception (Stash.get raises and catches on a miss)
        cached = stash[_CLOSEST]
        if cached[0] == len(own) and cached[1] is inherited:
            return cached[2]
    found = inherited
    if own:
        found = dict(inherited)
        for mark in reversed(own):  # within a node the first mark is the closest, as in iter_markers
            found[mark.name] = mark
    stash[_CLOSEST] = (len(own), inherited, found)
    return found


def closest_mark(item: pytest.Item, name: str) -> pytest.Mark | None:
    """``closest(item).get(name)``, without building and keeping the item's own answer: asked of every
    item at collection, it then leaves no object behind per item (thousands of them would bring on
    another full garbage collection of the whole session's heap)."""
    for mark in item.own_markers:  # the first is the closest, as in closest()
        if mark.name == name:
            return mark
    return closest(item.parent).get(name) if item.parent is not None else None


def names(item: pytest.Item) -> KeysView[str]:
    return closest(item).keys()


def module_of(item: pytest.Item) -> str:
    """The module part of an item's node id ("test/test_x.py"): the unit of isolation and of leak rows."""
    return item.nodeid.split("::", 1)[0]


def gpu_markers(settings: Settings) -> tuple[str, ...]:
    """Every marker that implies a GPU: ours, the project's (ini ``heavy_gpu_markers``) and its resource
    markers for VRAM or GPUs (``heavy_resource_markers``)."""
    resources = tuple(name for name, kind in settings.resource_markers if kind in ("vram", "gpus"))
    return ("requires_gpu", "requires_vram", *settings.gpu_markers, *resources)


class NeedsError(ValueError):
    """A mark whose arguments cannot be read; the message names the marker, the caller the test."""


@dataclass(frozen=True)
class Needs:
    """What one item asks of the machine and of the run, read once from its closest marks."""

    gpu_marker: str | None = None  # the first mark that implies a GPU (named in skip reasons)
    gpus: int = 0  # GPUs asked for: requires_gpu(count=N) or a gpus resource marker; 1 for other GPU marks
    gpus_marker: str = "requires_gpu"  # the mark that gave the count
    vram_gib: float | None = None  # requires_vram(gib) or a vram resource marker
    vram_marker: str = "requires_vram"
    ram_gib: float | None = None  # requires_heavy_ram(gib=) or a ram resource marker (ini default)
    ram_marker: str = "requires_heavy_ram"
    ram_default: bool = False  # the amount is ini heavy_ram_gib (the mark gave none)
    packages: tuple[tuple[str, str], ...] = ()  # (marker, package the marker needs importable)
    isolate: bool = False  # carries a heavy_isolate_markers marker: its module runs in a child
    gpu_isolation: bool = False  # requires_gpu_isolation: its child takes a GPU when packed
    qualitative: bool = False  # CICD=1 skips it
    slow: bool = False  # the default tier deselects it


def _amount(mark: pytest.Mark, keys: tuple[str, ...], what: str, example: str) -> object:
    """The amount a mark carries: its first positional argument or one of ``keys``; for a project's
    own resource marker, its only keyword argument whatever its name (``require_ram(min_gb=64)``)."""
    for key in keys:
        if key in mark.kwargs:
            return mark.kwargs[key]
    if mark.args:
        return mark.args[0]
    if not keys and len(mark.kwargs) == 1:
        return next(iter(mark.kwargs.values()))
    if mark.kwargs:
        raise NeedsError(f"{mark.name} expects {what}, e.g. {example}; got {_shown(mark)}")
    return None


def _shown(mark: pytest.Mark) -> str:
    args = [repr(a) for a in mark.args] + [f"{k}={v!r}" for k, v in mark.kwargs.items()]
    return f"{mark.name}({', '.join(args)})"


def _gib(mark: pytest.Mark, value: object, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise NeedsError(f"{mark.name} expects a number of GiB, e.g. {example}; got {_shown(mark)}")
    try:
        gib = float(value)
    except ValueError:
        raise NeedsError(f"{mark.name} expects a number of GiB, e.g. {example}; got {_shown(mark)}") from None
    if not (math.isfinite(gib) and gib > 0):
        raise NeedsError(f"{mark.name} expects a positive number of GiB; got {_shown(mark)}")
    return gib


def _count(mark: pytest.Mark, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise NeedsError(f"{mark.name} expects a whole number of GPUs >= 1, e.g. {mark.name}(count=2); "
                         f"got {_shown(mark)}")
    return value


def amount(mark: pytest.Mark) -> float | None:
    """The amount one of our amount-bearing marks carries, checked: ``requires_gpu``'s count (1 without
    one), ``requires_vram``'s GiB, ``requires_heavy_ram``'s GiB (None: ini ``heavy_ram_gib``). The
    example header calls it too, so that a bad amount is reported at the header's line."""
    if mark.name == "requires_gpu":
        value = _amount(mark, ("count",), "a number of GPUs", "requires_gpu(count=2)")
        return 1 if value is None else _count(mark, value)
    if mark.name == "requires_vram":
        example = "requires_vram(24)"
        return _gib(mark, _amount(mark, ("gib", "gb"), "a number of GiB", example), example)
    if mark.name == "requires_heavy_ram" and (mark.args or mark.kwargs):
        example = "requires_heavy_ram(gib=64)"
        return _gib(mark, _amount(mark, ("gib",), "a number of GiB", example), example)
    return None


def read_needs(by_name: Mapping[str, pytest.Mark], settings: Settings) -> Needs:
    """The needs of a test with these marks (each name's closest); raises NeedsError for a bad argument.

    Every amount-bearing mark is read here, whether or not this machine or run will look at it
    (``--heavy-ignore-gpu-check``, no GPU), so a typo fails the same way everywhere.
    """
    gpu_marker = next((m for m in gpu_markers(settings) if m in by_name), None)
    gpus, gpus_marker = (1 if gpu_marker else 0), "requires_gpu"
    if "requires_gpu" in by_name:
        gpus = int(amount(by_name["requires_gpu"]) or 1)
    vram_gib = amount(by_name["requires_vram"]) if "requires_vram" in by_name else None
    vram_marker = "requires_vram"
    ram_gib, ram_marker, ram_default = None, "requires_heavy_ram", False
    if "requires_heavy_ram" in by_name:
        ram_gib = amount(by_name["requires_heavy_ram"])
        ram_default = ram_gib is None
        ram_gib = settings.ram_gib if ram_gib is None else ram_gib
    for name, kind in settings.resource_markers:
        if name not in by_name:
            continue
        mark = by_name[name]
        value = _amount(mark, (), f"an amount ({kind})", f"{name}(2)")
        if value is None:
            raise NeedsError(f"{name} (heavy_resource_markers: {kind}) expects an amount, e.g. {name}(2); "
                             f"got {_shown(mark)}")
        if kind == "gpus":
            gpus, gpus_marker = max(gpus, _count(mark, value)), name
        elif kind == "vram":
            vram_gib, vram_marker = _gib(mark, value, f"{name}(24)"), name
        else:
            ram_gib, ram_marker, ram_default = _gib(mark, value, f"{name}(64)"), name, False
    return Needs(gpu_marker=gpu_marker, gpus=gpus, gpus_marker=gpus_marker, vram_gib=vram_gib,
                 vram_marker=vram_marker, ram_gib=ram_gib, ram_marker=ram_marker, ram_default=ram_default,
                 packages=tuple((m, p) for m, p in settings.marker_packages if m in by_name),
                 isolate=any(m in by_name for m in settings.isolate_markers),
                 gpu_isolation="requires_gpu_isolation" in by_name,
                 qualitative="qualitative" in by_name, slow="slow" in by_name)


_NEEDS = pytest.StashKey[Needs]()
NO_NEEDS = Needs()  # most items: none of the marks ``read_needs`` reads, so nothing to read or check
_read: tuple[Settings, frozenset[str]] | None = None  # the names read_needs looks at, for these settings


def read_names(settings: Settings) -> frozenset[str]:
    """Every marker name ``read_needs`` looks at: an item with none of them needs nothing."""
    global _read
    if _read is None or _read[0] is not settings:
        found = {*gpu_markers(settings), "requires_heavy_ram", "requires_gpu_isolation", "qualitative",
                 "slow", *settings.isolate_markers, *(m for m, _ in settings.resource_markers),
                 *(m for m, _ in settings.marker_packages)}
        _read = (settings, frozenset(found))
    return _read[1]


def needs(item: pytest.Item, settings: Settings) -> Needs:
    """``item``'s needs record, read once (at collection, where ``NeedsError`` becomes a usage error)."""
    if _NEEDS in item.stash:
        return item.stash[_NEEDS]
    read = read_names(settings)
    # As closest_mark: an item with none of those marks, its own or its parents', needs no answer of its own.
    inherited = closest(item.parent) if item.parent is not None else _NO_MARKS
    if read.isdisjoint(inherited) and not any(mark.name in read for mark in item.own_markers):
        found = NO_NEEDS
    else:
        found = read_needs(closest(item), settings)
    item.stash[_NEEDS] = found
    return found


def needs_or_usage_error(item: pytest.Item, settings: Settings) -> Needs:
    """``needs``, with a bad marker argument turned into the usage error that names the test."""
    try:
        return needs(item, settings)
    except NeedsError as exc:
        raise pytest.UsageError(f"{item.nodeid}: {exc}") from None
