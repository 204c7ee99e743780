"""What this machine has: GPUs (NVML), MPS, RAM and CPUs (psutil).

The probe never imports torch and never creates a CUDA context: NVML is a read-only management
library, so a pytest parent that probes stays safe to fork and never occupies a GPU that is in
EXCLUSIVE_PROCESS mode. The snapshot is taken once per session and handed to child processes as
JSON (``PYTEST_HEAVY_HARDWARE``), so children never probe again.

``--heavy-assume SPEC`` (``assume.py``, the parser) replaces parts of the probe to plan a run for
another machine; it is also how CPU-only CI exercises the GPU paths.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from . import mps_detect

HARDWARE_ENV = "PYTEST_HEAVY_HARDWARE"

# NVML's nvmlComputeMode_t values (nvml.h); the names are ours and appear in specs and reports.
COMPUTE_MODES = {0: "default", 1: "exclusive_thread", 2: "prohibited", 3: "exclusive_process"}


@dataclass(frozen=True)
class GPU:
    """One device CUDA would show this process, in CUDA_VISIBLE_DEVICES order."""

    index: int  # NVML index of the physical device
    uuid: str
    name: str
    total_mib: int
    used_mib: int
    compute_mode: str = "default"
    mig: bool = False  # a MIG instance rather than a whole device

    @property
    def total_gib(self) -> float:
        return self.total_mib / 1024


@dataclass(frozen=True)
class Hardware:
    """One snapshot of the machine; every gating and routing decision reads only this."""

    gpus: tuple[GPU, ...] = ()
    gpu_reason: str = ""  # why there are no GPUs, when there are none
    driver: str = ""
    mps: bool = False  # an NVIDIA MPS control daemon answers
    mps_detail: str = ""
    apple_mps: bool = False  # Metal backend on arm64 macOS
    ram_total_mib: int = 0
    ram_available_mib: int = 0
    cpus: int = 1
    assumed: tuple[str, ...] = field(default_factory=tuple)  # fields set by --heavy-assume

    @property
    def exclusive(self) -> bool:
        return any(g.compute_mode in ("exclusive_process", "exclusive_thread") for g in self.gpus)

    @property
    def parent_trap_risk(self) -> bool:
        """EXCLUSIVE_PROCESS without MPS: a CUDA context in the parent blocks every GPU child."""
        return self.exclusive and not self.mps

    @property
    def gpus_assumed(self) -> bool:
        return "gpus" in self.assumed or "compute_mode" in self.assumed

    def no_gpu_reason(self) -> str:
        return self.gpu_reason or "no GPU visible"

    def summary(self) -> str:
        """The one line shown in the session header."""
        if self.gpus:
            names: dict[str, int] = {}
            for g in self.gpus:
                key = f"{g.name} {g.total_gib:.0f}GiB"
                names[key] = names.get(key, 0) + 1
            gpu = ", ".join(f"{n}x {k}" for k, n in names.items())
            modes = sorted({g.compute_mode for g in self.gpus})
            gpu += f" ({'/'.join(modes)})"
        else:
            gpu = f"no GPU ({self.no_gpu_reason()})"
        mps = "MPS on" if self.mps else "MPS off"
        if self.apple_mps:
            mps += ", Apple MPS"
        ram = f"RAM {self.ram_total_mib / 1024:.1f}GiB"
        text = f"{gpu}; {mps}; {ram}; {self.cpus} CPUs"
        if self.assumed:
            text += f" [assumed: {','.join(self.assumed)}]"
        return text

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Hardware:
        data = json.loads(text)
        data["gpus"] = tuple(GPU(**g) for g in data.get("gpus", ()))
        data["assumed"] = tuple(data.get("assumed", ()))
        return cls(**data)


# --- the real probe -------------------------------------------------------------------------------


def visible_selectors(env: dict[str, str] | None = None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as CUDA reads it: None when unset; entries stop at the first empty one."""
    raw = (env if env is not None else os.environ).get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return None
    selectors = []
    for entry in raw.split(","):
        entry = entry.strip()
        if not entry or entry.startswith("-"):
            break
        selectors.append(entry)
    return selectors


@contextmanager
def nvml_session() -> Iterator[Any]:
    """Yield the initialized ``pynvml`` module; shuts NVML down afterwards (calls are ref-counted)."""
    import pynvml  # nvidia-ml-py; imported lazily so CPU-only sessions pay nothing for it

    pynvml.nvmlInit()
    try:
        yield pynvml
    finally:
        try:
            pynvml.nvmlShutdown()
        except pynvml.NVMLError:
            pass


def nvml_error_reason(exc: BaseException) -> str:
    """A reason a person can act on, e.g. 'NVML unavailable: libnvidia-ml.so.1 not found'."""
    name = type(exc).__name__
    if isinstance(exc, ImportError):
        return "NVML unavailable: nvidia-ml-py is not installed"
    if "LibraryNotFound" in name:
        return "NVML unavailable: libnvidia-ml.so.1 not found"
    if "DriverNotLoaded" in name:
        return "NVML unavailable: the NVIDIA driver is not loaded"
    if "NoPermission" in name:
        return "NVML unavailable: no permission to query the GPUs"
    return f"NVML unavailable: {exc}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _device_gpu(nv: Any, handle: Any, index: int, mig: bool, mode: str | None = None) -> GPU:
    mem = nv.nvmlDeviceGetMemoryInfo(handle)
    if mode is None:
        try:
            mode = COMPUTE_MODES.get(nv.nvmlDeviceGetComputeMode(handle), "default")
        except nv.NVMLError:
            mode = "default"
    return GPU(index=index, uuid=_text(nv.nvmlDeviceGetUUID(handle)),
               name=_text(nv.nvmlDeviceGetName(handle)), total_mib=int(mem.total) // (1 << 20),
               used_mib=int(mem.used) // (1 << 20), compute_mode=mode, mig=mig)


def _all_units(nv: Any) -> list[GPU]:
    """Every whole device we may open, followed by its MIG instances when MIG mode is on.

    A device NVML counts but will not let us read (e.g. NoPermission for a GPU a job's device cgroup
    denies) is left out rather than hiding every GPU: CUDA cannot use it either. Only when no device
    is readable does the first error propagate, so the probe reports why.
    """
    units: list[GPU] = []
    first_error: Exception | None = None
    for index in range(nv.nvmlDeviceGetCount()):
        try:
            handle = nv.nvmlDeviceGetHandleByIndex(index)
            gpu = _device_gpu(nv, handle, index, mig=False)
        except nv.NVMLError as exc:
            first_error = first_error or exc
            continue
        units.append(gpu)
        try:
            current, _pending = nv.nvmlDeviceGetMigMode(handle)
        except nv.NVMLError:
            continue
        if not current:
            continue
        for slot in range(nv.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:  # empty slots raise NotFound
                mig_handle = nv.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                units.append(_device_gpu(nv, mig_handle, index, mig=True, mode=gpu.compute_mode))
            except nv.NVMLError:
                continue
    if not units and first_error is not None:
        raise first_error
    return units


def select_visible(units: Sequence[GPU], selectors: list[str] | None) -> tuple[GPU, ...]:
    """Map CUDA_VISIBLE_DEVICES (indices or UUID prefixes) onto NVML units, by UUID.

    Indices count the whole devices this process can open, in NVML (PCI bus) order, which is CUDA's
    order when CUDA_DEVICE_ORDER=PCI_BUS_ID; an entry that matches nothing ends the list, as in CUDA.
    """
    whole = [u for u in units if not u.mig]
    if selectors is None:
        return tuple(whole)
    chosen: list[GPU] = []
    for sel in selectors:
        match: GPU | None
        if sel.isdigit():
            match = whole[int(sel)] if int(sel) < len(whole) else None
        else:
            key = sel if sel.startswith(("GPU-", "MIG-")) else f"GPU-{sel}"
            match = next((u for u in units if u.uuid.startswith(key)), None)
        if match is None:
            break
        if match not in chosen:
            chosen.append(match)
    return tuple(chosen)


def _nvml_library_missing() -> bool:
    """True when libnvidia-ml cannot be loaded: the common CPU-only case, answered in about 1 ms.

    Importing the binding costs about 18 ms (it pulls in ctypes.util), most of the probe's budget,
    so machines without the driver skip it; everywhere else the binding itself does the work.
    """
    if sys.platform != "linux":
        return False
    import ctypes

    try:
        ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return True
    return False


def probe_gpus() -> tuple[tuple[GPU, ...], str, str]:
    """(visible GPUs, reason when none, driver version) through NVML only."""
    if _nvml_library_missing() and "pynvml" not in sys.modules:
        return (), "NVML unavailable: libnvidia-ml.so.1 not found", ""
    try:
        with nvml_session() as nv:
            driver = _text(nv.nvmlSystemGetDriverVersion())
            units = _all_units(nv)
    except Exception as exc:  # ImportError or any NVMLError: no GPUs, with the reason kept
        return (), nvml_error_reason(exc), ""
    selectors = visible_selectors()
    gpus = select_visible(units, selectors)
    reason = ""
    if not gpus:
        reason = ("CUDA_VISIBLE_DEVICES hides every GPU" if units and selectors is not None
                  else "NVML sees no GPU")
    return gpus, reason, driver


def ram_mib() -> tuple[int, int]:
    """(total, available) MiB of host RAM. On Linux straight from /proc/meminfo, the file psutil reads
    too: importing psutil costs a session start more than the whole probe, and every opted-in session
    probes (psutil is imported later, by sessions that start processes). Elsewhere psutil."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            kib = {key: int(rest.split()[0]) for key, _, rest in (line.partition(":") for line in fh)
                   if key in ("MemTotal", "MemAvailable")}
        return kib["MemTotal"] >> 10, kib["MemAvailable"] >> 10
    except (OSError, KeyError, ValueError, IndexError):
        import psutil

        vm = psutil.virtual_memory()
        return vm.total >> 20, vm.available >> 20


def probe(gpus_assumed: bool = False) -> Hardware:
    """Probe the machine once; with ``gpus_assumed`` (``--heavy-assume gpus=...``) NVML is not asked."""
    gpus: tuple[GPU, ...]
    if gpus_assumed:
        gpus, reason, driver = (), "", ""
    else:
        gpus, reason, driver = probe_gpus()
    mps_pid, mps_detail = mps_detect.daemon_pid() if gpus or gpus_assumed else (None, "no GPU")
    ram_total, ram_available = ram_mib()
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        cpus = os.cpu_count() or 1
    hw = Hardware(
        gpus=gpus,
        gpu_reason=reason,
        driver=driver,
        mps=mps_pid is not None,
        mps_detail=mps_detail,
        apple_mps=platform.system() == "Darwin" and platform.machine() == "arm64",
        ram_total_mib=ram_total,
        ram_available_mib=ram_available,
        cpus=cpus,
    )
    return hw


def from_env() -> Hardware | None:
    """The parent's snapshot, in a child process."""
    text = os.environ.get(HARDWARE_ENV)
    return Hardware.from_json(text) if text else None
