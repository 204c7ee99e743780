"""The parent context guard: does the pytest parent hold a CUDA context, and which test made it?

On a GPU in EXCLUSIVE_PROCESS mode only one process may hold a context. Once the pytest parent holds
one, every GPU child started afterwards fails with "CUDA-capable device(s) is/are busy or
unavailable". The guard finds that state without ever creating a context itself, from two sources:

- NVML's compute-process lists, when pids are comparable: NVML reports host pids, so inside a pid
  namespace (most containers) ``os.getpid()`` is not what NVML lists and this source is skipped.
- ``torch.cuda.is_initialized()``, only when a test already imported torch (the plugin never imports
  it). True means torch initialized CUDA here; the context exists or appears at the next CUDA call.

After each in-parent test (and once after collection, for contexts made by imports) the guard
checks and remembers the first test that left the parent holding a context; ``refusal(config, ...)``
checks once more before a GPU child or example starts, and the terminal summary names the test.

Test double: on machines without a GPU, ``test/fakes/torch_double`` put on ``sys.path`` provides a
``torch`` whose ``torch.cuda.init()`` makes ``torch.cuda.is_initialized()`` true, standing in for a
real context; ``test/fakes/pynvml.py`` (``fake_create_context``) does the same for the NVML source.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Generator
from typing import Any

import pytest

from ..cleanup import cuda_initialized
from ..state import RUN, Run

# The inode of the initial (host) pid namespace: a fixed kernel constant (PROC_PID_INIT_INO). Comparing
# with /proc/1/ns/pid would not do: inside a container, pid 1 shares the container's namespace.
PROC_PID_INIT_INO = 0xEFFFFFFC

REMEDIES = (
    "mark that test (or its module) with a GPU marker such as requires_gpu, or requires_gpu_isolation, "
    "so it runs in a child process",
    "start MPS first (eval \"$(pytest-heavy mps start)\"; pytest-heavy mps stop ends it) "
    "so GPU processes share the device",
    "split the run so that test and the GPU tests run in separate pytest processes: pytest-heavy split N",
)


def pids_comparable(link: str | None = None) -> tuple[bool, str]:
    """(whether NVML's pids are ours, why): true only in the host pid namespace.

    ``link`` is the text of the /proc/self/ns/pid link (read when None), e.g. ``pid:[4026531836]``.
    """
    if link is None:
        try:
            link = os.readlink("/proc/self/ns/pid")
        except OSError:
            return False, "no /proc/self/ns/pid to compare pid namespaces"
    try:
        inode = int(link.rsplit("[", 1)[1].rstrip("]"))
    except (IndexError, ValueError):
        return False, f"unreadable pid namespace {link!r}"
    if inode == PROC_PID_INIT_INO:
        return True, "host pid namespace"
    return False, f"inside a pid namespace ({link}), where NVML's host pids are not comparable"


def nvml_context(nv: Any, pid: int, indices: list[int]) -> str | None:
    """Where NVML lists ``pid`` as a compute process, among the devices ``indices``; None if nowhere."""
    for index in indices:
        handle = nv.nvmlDeviceGetHandleByIndex(index)
        for proc in nv.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == pid:
                used = proc.usedGpuMemory
                amount = f", {used >> 20} MiB" if used is not None else ""
                return f"NVML lists pytest's pid {pid} on GPU {index}{amount}"
    return None


def parent_holds_context(nvml: Any = None, indices: list[int] | None = None) -> tuple[bool, str]:
    """(True when this process holds a CUDA context, how that was determined); never creates one.

    ``nvml``: an initialized ``pynvml`` module to ask about the GPUs ``indices`` (None: torch only).
    """
    how: list[str] = []
    if nvml is not None:
        comparable, why = pids_comparable()
        if comparable:
            try:
                where = nvml_context(nvml, os.getpid(), indices or [])
            except nvml.NVMLError as exc:
                how.append(f"NVML process list unavailable ({exc})")
            else:
                if where:
                    return True, where
                how.append("NVML does not list pytest's pid")
        else:
            how.append(f"NVML not asked: {why}; torch check only")
    if "torch" not in sys.modules:
        how.append("torch not imported")
    elif cuda_initialized():
        return True, "; ".join([*how, "torch.cuda.is_initialized() is True"])
    else:
        how.append("torch.cuda.is_initialized() is False")
    return False, "; ".join(how)


BEFORE_TESTS = "before the first test (a conftest, plugin or test module import)"


class ContextGuard:
    """Checks the parent after each test it runs and remembers the first that left a context behind."""

    def __init__(self, run: Run) -> None:
        hw = run.hardware
        # Assumed GPUs are not real devices: NVML has nothing to say about them. Real GPUs with an
        # assumed compute mode still are, which is how a DEFAULT-mode machine rehearses the trap.
        self.indices = sorted({g.index for g in hw.gpus}) if "gpus" not in hw.assumed else []
        self.held = False
        self.last: str | None = None  # node id of the last in-parent test observed
        self.where = ""  # "after <the first test that left a context>", or BEFORE_TESTS
        self.detail = ""  # how the context was found
        self._nvml: Any = None

    def _open_nvml(self) -> Any:
        """NVML stays initialized for the session: a per-test nvmlInit can take tens of milliseconds."""
        if self._nvml is None and self.indices:
            try:
                import pynvml

                pynvml.nvmlInit()
            except Exception:  # no binding or no driver: the torch check still works
                self.indices = []
                return None
            self._nvml = pynvml
        return self._nvml

    def check(self) -> tuple[bool, str]:
        """A fresh check, e.g. right before a GPU child starts."""
        return parent_holds_context(self._open_nvml(), self.indices)

    def observe(self, nodeid: str | None) -> None:
        """Record the first time the parent is seen holding a context (nodeid None: before any test)."""
        self.last = nodeid or self.last
        if self.held:
            return
        held, detail = self.check()
        if held:
            self.held, self.detail = True, detail
            self.where = f"after {nodeid}" if nodeid else BEFORE_TESTS

    def describe(self) -> str:
        """The warning line: what holds the context, since when, how it was seen, what to do."""
        remedies = "; ".join(f"({n}) {r}" for n, r in enumerate(REMEDIES, 1))
        return (f"the pytest parent holds a CUDA context, first seen {self.where} ({self.detail}). On a GPU "
                "in EXCLUSIVE_PROCESS mode without MPS, every GPU process started after that fails with "
                f"'device busy'. Remedies: {remedies}")

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.observe(None)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item,
                                nextitem: pytest.Item | None) -> Generator[None, Any, Any]:
        try:
            return (yield)
        finally:
            self.observe(item.nodeid)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.held:
            terminalreporter.write_line(f"pytest-heavy: warning: {self.describe()}", yellow=True)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass
            self._nvml = None


GUARD = pytest.StashKey[ContextGuard]()


def refusal(config: pytest.Config, what: str) -> str | None:
    """Why the GPU process for ``what`` must not start, or None when it may.

    Only on GPUs in EXCLUSIVE_PROCESS mode without MPS, and only once the parent holds a CUDA context:
    the child would certainly fail with 'device busy', so its tests fail at once with the cause instead.
    A fresh check runs first, since a context can appear between two observations (a fixture's teardown).
    """
    guard = get(config)
    if guard is None or not config.stash[RUN].hardware.parent_trap_risk:
        return None
    guard.observe(guard.last)
    if not guard.held:
        return None
    return f"{what} was not started: {guard.describe()}"


def context_pids(config: pytest.Config, pids: set[int]) -> set[int] | None:
    """The pids whose CUDA contexts must be gone before the next GPU process starts, or None when
    there is nothing to wait for (no parent trap, or NVML's host pids are not comparable with ours)."""
    if not config.stash[RUN].hardware.parent_trap_risk or not pids_comparable()[0]:
        return None
    return pids


def register(config: pytest.Config, run: Run) -> None:
    """Guard the parent only: a child holding a context is expected, it exits when its module is done.
    Without a GPU (real or assumed) no test can create a context: no per-test check is registered."""
    if run.settings.child or not run.hardware.gpus:
        return
    guard = config.stash[GUARD] = ContextGuard(run)
    config.pluginmanager.register(guard, "heavy-context-guard")


def get(config: pytest.Config) -> ContextGuard | None:
    return config.stash.get(GUARD, None)

