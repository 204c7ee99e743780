"""``record_testsuite_property`` and ``record_xml_attribute`` in isolated tests.

Both fixtures write straight into pytest's junit writer (``LogXML``), which only the parent has (a
child never writes junit) and which they silently skip when it is missing. So a child whose parent
writes junit gets a stand-in that records the calls; they ride on the child's next report
(``TAKE_KEY``) and the parent applies them to its own writer just before replaying that report.
"""

from __future__ import annotations

from typing import Any

import pytest

from ..wire import JUNIT_KEY as TAKE_KEY  # {"suite": [[name, value]], "attributes": {nodeid: [...]}}

FAMILY_OPTION = "heavy_junit_family"  # set on the parent's options when it writes junit: children read it


class _Attributes:
    """What ``record_xml_attribute`` gets from ``LogXML.node_reporter``."""

    def __init__(self, recorder: Recorder, nodeid: str) -> None:
        self._recorder, self._nodeid = recorder, str(nodeid)  # pytest 9's NodeId is no JSON key

    def add_attribute(self, name: str, value: object) -> None:
        self._recorder.attributes.setdefault(self._nodeid, []).append([name, str(value)])


class Recorder:
    """The child's stand-in for ``LogXML``: the parts the two fixtures use."""

    def __init__(self, family: str) -> None:
        self.family = family  # record_xml_attribute warns under xunit2, as it does in-process
        self.suite: list[list[str]] = []
        self.attributes: dict[str, list[list[str]]] = {}

    def add_global_property(self, name: str, value: object) -> None:
        self.suite.append([name, str(value)])

    def node_reporter(self, report: Any) -> _Attributes:
        return _Attributes(self, getattr(report, "nodeid", report))

    def take(self) -> dict[str, Any] | None:
        """What was recorded since the last take, or None."""
        if not (self.suite or self.attributes):
            return None
        taken = {"suite": self.suite, "attributes": self.attributes}
        self.suite, self.attributes = [], {}
        return taken


def install(config: pytest.Config) -> Recorder | None:
    """In a child: the stand-in, when the parent writes junit (also over a forked parent's copy)."""
    from _pytest.junitxml import xml_key

    family = getattr(config.option, FAMILY_OPTION, None)
    if not family:
        return None
    recorder = Recorder(family)
    config.stash[xml_key] = recorder  # type: ignore[assignment,misc]
    # junitxml's pytest_unconfigure unregisters whatever the stash holds: a plugin without hooks
    config.pluginmanager.register(recorder, "heavy-junit-recorder")
    return recorder


def announce(config: pytest.Config) -> None:
    """In the parent, before any child starts: tell children whether (and in which family) it writes junit."""
    from _pytest.junitxml import xml_key

    xml = config.stash.get(xml_key, None)
    setattr(config.option, FAMILY_OPTION, getattr(xml, "family", None))


def apply(config: pytest.Config, data: dict[str, Any]) -> None:
    """In the parent: what a child's tests recorded, into the parent's junit writer."""
    from _pytest.junitxml import xml_key

    taken = data.pop(TAKE_KEY, None)
    xml = config.stash.get(xml_key, None)
    if not taken or xml is None:
        return
    for name, value in taken["suite"]:
        xml.add_global_property(name, value)
    for nodeid, attributes in taken["attributes"].items():
        for name, value in attributes:
            xml.node_reporter(nodeid).add_attribute(name, value)
