"""``--heavy-workers N``: up to N children at once, in collection order, blind to memory.

A job waits for the one before it (no reordering, no backfilling), so output and junit keep the
collection order of today's runs. Children are not pinned to GPUs (a project's
``pytest_heavy_child_env`` can pin them). Where the parent trap routes GPU modules into children
(EXCLUSIVE_PROCESS without MPS), one such child runs at a time: only one process may hold a context.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import Job, Placement


class CountScheduler:
    name = "count"
    reorders = False

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.running: list[Job] = []

    def pick(self, ready: Sequence[Job]) -> tuple[Job, Placement] | None:
        if not ready:
            return None
        job = ready[0]
        if len(self.running) >= self.workers or (job.routed and any(j.routed for j in self.running)):
            return None
        return job, Placement()

    def started(self, job: Job, placement: Placement) -> None:
        self.running.append(job)

    def finished(self, job: Job) -> None:
        self.running.remove(job)
