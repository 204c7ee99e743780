"""Child events -> pytest's own hooks, in the parent's main thread.

Terminal, junit, ``--lf`` and the exit code see exactly what an in-process run would, because every
report (a child's, or one the parent wrote for a test its child could not report) goes through
``pytest_runtest_logreport`` like one produced here. Writes nothing but pytest's hooks: which events
to replay is the unit's books' answer (``units.py``), and the controller hands them over.
"""

from __future__ import annotations

import pytest

from ..memory import Peaks
from ..wire import Interrupt, LogFinish, LogStart, Report, WarningEvent, deserialize_warning


class Replay:
    def __init__(self, config: pytest.Config, junit_properties: bool = False) -> None:
        self.config = config
        self.hook = config.hook
        self.junit_properties = junit_properties  # peak memory in user_properties: only when asked

    def logstart(self, event: LogStart) -> None:
        self.hook.pytest_runtest_logstart(nodeid=event["nodeid"], location=tuple(event["location"]))

    def report(self, event: Report) -> pytest.TestReport:
        """A child's report as the parent's own object (every plugin's deserialization hooks run)."""
        report: pytest.TestReport = self.hook.pytest_report_from_serializable(config=self.config,
                                                                              data=event["data"])
        return report

    def logreport(self, report: pytest.TestReport, peaks: Peaks | None) -> None:
        """``peaks``: the child's peaks so far, added to a teardown's user properties when asked
        (by default an isolated run's junit equals an in-process run's)."""
        if report.when == "teardown" and peaks is not None and self.junit_properties:
            report.user_properties.append(("heavy_module_peak_rss_mib", round(peaks.rss_mib)))
            if peaks.gpu_mib is not None:
                report.user_properties.append(("heavy_module_peak_gpu_mib", round(peaks.gpu_mib)))
        self.hook.pytest_runtest_logreport(report=report)

    def logfinish(self, event: LogFinish) -> None:
        self.hook.pytest_runtest_logfinish(nodeid=event["nodeid"], location=tuple(event["location"]))

    def warning(self, event: WarningEvent) -> None:
        location = event.get("location")
        self.hook.pytest_warning_recorded.call_historic(kwargs=dict(
            warning_message=deserialize_warning(event["message"]), when=event["when"],
            nodeid=event["nodeid"], location=tuple(location) if location else None))


def reraise(event: Interrupt) -> None:
    """End the parent's session as the test in the child ended its own: pytest then prints
    ``!!! Exit: reason !!!`` (or ``!!! KeyboardInterrupt !!!`` and where) and exits with 2, or with
    the code given to ``pytest.exit``."""
    if event["kind"] == "KeyboardInterrupt":
        path, _, line = event["where"].rpartition(":")
        if path and line.isdigit():  # raised "at" the test's own line, so that pytest names it and not us
            exec(compile("\n" * (int(line) - 1) + "raise KeyboardInterrupt", path, "exec"))
        raise KeyboardInterrupt
    raise pytest.exit.Exception(event["reason"], event["returncode"])
