"""Subtest reports (pytest >= 9's ``subtests`` fixture and unittest's ``subTest``) across the process
boundary, so that an isolated test with subtests reads as it does in-process.

``SubtestContext`` applies ``saferepr`` to the kwargs when it is built, also when it is rebuilt from
JSON, so a child's ``i=1`` would arrive as ``i='1'``: the parent keeps the child's reprs. (The test's
own outcome, "contains N failed subtests", is decided by the child: its forwarder sends each report
after pytest's ``pytest_report_teststatus`` changed it.)
"""

from __future__ import annotations

from typing import Any

import pytest

REPORT_TYPES = ("SubTestReport",)  # pytest's "_report_type" of a serialized subtest report


def is_subtest(report: pytest.TestReport) -> bool:
    """A subtest's report: a test's part, not a test (the heavy table does not count it)."""
    return type(report).__name__ in ("SubtestReport", "SubTestReport")


def rebuild(data: dict[str, Any]) -> pytest.TestReport | None:
    """The subtest report a child sent, with its kwargs' reprs as the child made them; None when
    ``data`` is not a subtest report of pytest's built-in subtests."""
    if data.get("_report_type") not in REPORT_TYPES:
        return None
    try:
        from _pytest.subtests import SubtestReport
    except ImportError:  # pytest < 9: a plugin's subtest reports are that plugin's business
        return None
    report = SubtestReport._from_json(data)
    # The kwargs are reprs already (the child's saferepr); the rebuilt context applied it again.
    object.__setattr__(report.context, "kwargs", dict(data["_subtest.context"]["kwargs"]))
    return report
