"""The marker registry: every marker pytest-heavy documents, registered with its help text.

Registering them all keeps ``--strict-markers`` runs clean; ``docs/markers.md`` is the long form.
"""

from __future__ import annotations

from collections.abc import KeysView

import pytest

MARKERS: dict[str, str] = {
    "qualitative": "checks output quality (slower, model-dependent); skipped when CICD=1; "
                   "the fast tier is -m 'not qualitative'",
    "slow": "long-running; deselected by default, run with -m slow or --heavy-run-slow",
    "requires_gpu(count=1)": "needs count CUDA GPUs (probed through NVML); skipped with the reason "
                             "otherwise; --heavy-workers auto pins the module's child to that many GPUs",
    "requires_vram(gb)": "needs a visible GPU with at least gb GiB of total memory",
    "requires_heavy_ram": "needs heavy_ram_gib GiB of host RAM; its module runs in its own process",
    "requires_gpu_isolation": "its module runs in its own child process (GPU memory freed at exit)",
    "huggingface": "uses HuggingFace models; implies a GPU (heavy_gpu_markers)",
    "vllm": "uses vLLM; needs a GPU and the vllm package; its module runs in its own process",
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
    inherited = closest(node.parent) if node.parent is not None else {}
    cached = node.stash.get(_CLOSEST, None)
    if cached is not None and cached[0] == len(own) and cached[1] is inherited:
        return cached[2]
    found = inherited
    if own:
        found = dict(inherited)
        for mark in reversed(own):  # within a node the first mark is the closest, as in iter_markers
            found[mark.name] = mark
    node.stash[_CLOSEST] = (len(own), inherited, found)
    return found


def names(item: pytest.Item) -> KeysView[str]:
    return closest(item).keys()
