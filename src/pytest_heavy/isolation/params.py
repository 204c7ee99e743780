"""Parameters that depend on the hash seed: the same node id must run the same parameter in a child.

``@pytest.mark.parametrize("x", {...})`` over a set (or anything iterated in hash order) gives ids
by position (``test[x0]``, ``test[x1]``) when the values have no readable id. With hash
randomization, a spawned child (a fresh interpreter, whose random hash secret differs from the
parent's and cannot be handed over) iterates the set in another order: ``test[x0]`` would
silently run the other value. So the spawn launcher writes each parametrized test's parameters
(their reprs) to a file named in the child's environment, and the child runs, under each node id the
parent asked for, the test that holds the parent's parameters. A fork of the parent or of the
template shares the parent's hash secret and needs none of this; neither does a run with
``PYTHONHASHSEED`` set (children inherit it).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile

import pytest
from _pytest._io.saferepr import saferepr

PARAMS_ENV = "PYTEST_HEAVY_PARAMS"  # a file: {nodeid: repr of the test's parameters}


def hash_order_differs() -> bool:
    """Whether a fresh interpreter iterates sets and dicts of strings in another order than this one."""
    return bool(sys.flags.hash_randomization) and os.environ.get("PYTHONHASHSEED", "random") == "random"


def describe(item: pytest.Item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return saferepr(callspec.params, maxsize=4096) if callspec is not None else None


def write(items: list[pytest.Item], directory: str) -> str | None:
    """In the parent: the parameters of ``items``, in a file in ``directory`` for a spawned child;
    None when none has any. Only spawn asks: a fork (of the parent or the template) iterates as
    the parent does, and describing a module of 5,000 tests costs ~0.1 s."""
    described = {item.nodeid: text for item in items if (text := describe(item)) is not None}
    if not described:
        return None
    fd, path = tempfile.mkstemp(prefix="params-", suffix=".json", dir=directory)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(described, fh)
    return path


def rematch(items: list[pytest.Item]) -> tuple[dict[str, pytest.Item], dict[str, str]]:
    """In a child: node id -> the collected test that holds the parent's parameters for that node
    id, and the node ids to report under the parent's (child's id -> parent's id).

    Without the parent's file, or where no test here has the parent's parameters (a repr that
    differs between processes, such as an object's address), ids stay as collected."""
    by_id = {item.nodeid: item for item in items}
    path = os.environ.get(PARAMS_ENV)
    if not path:
        return by_id, {}
    try:
        with open(path, encoding="utf-8") as fh:
            wanted: dict[str, str] = json.load(fh)
    except (OSError, ValueError):
        return by_id, {}
    holders: dict[tuple[str, str], pytest.Item] = {}  # (function's id, parameters) -> item
    for item in items:
        if (text := describe(item)) is not None:
            holders.setdefault((item.nodeid.rsplit("[", 1)[0], text), item)
    renamed: dict[str, str] = {}
    for nodeid, text in wanted.items():
        holder = holders.get((nodeid.rsplit("[", 1)[0], text))
        if holder is not None and holder.nodeid != nodeid:
            by_id[nodeid] = holder
            renamed[holder.nodeid] = nodeid
    return by_id, renamed


def relabel(data: dict[str, object], renamed: dict[str, str]) -> None:
    """A serialized report of a renamed test, under the parent's node id (and its location's name)."""
    nodeid = data.get("nodeid")
    if not isinstance(nodeid, str) or nodeid not in renamed:
        return
    parent_id = renamed[nodeid]
    data["nodeid"] = parent_id
    location = data.get("location")
    if isinstance(location, (tuple, list)) and len(location) == 3:
        old, new = nodeid.rsplit("::", 1)[-1], parent_id.rsplit("::", 1)[-1]
        path, line, domain = location
        if isinstance(domain, str) and domain.endswith(old):
            data["location"] = (path, line, domain[: len(domain) - len(old)] + new)
