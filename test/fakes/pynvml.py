"""A fake ``pynvml`` (nvidia-ml-py) for machines without a GPU, modelled on the real binding.

Same function names, arguments, return shapes and error classes as the real module for the calls
pytest-heavy makes: ``nvmlInit``/``nvmlShutdown`` (reference counted; other calls raise
``NVMLError_Uninitialized`` outside them), device count and handles, UUID (``str``), name and driver
version (``bytes``, as older bindings return them), memory info in bytes, compute mode, MIG mode and MIG
device handles (empty slots raise ``NVMLError_NotFound``) and compute-process lists whose entries carry
``pid`` and ``usedGpuMemory``. ``NVMLError(code)`` returns the subclass for the code, as the real one does.

The machine is described by a dict (see ``configure``), taken from the ``FAKE_PYNVML`` environment
variable (JSON) at import, so a subprocess with this folder on PYTHONPATH sees the same machine::

    {"driver": "550.54.15", "init_error": null,
     "devices": [{"uuid": "GPU-...", "name": "NVIDIA H100", "total_mib": 81559, "used_mib": 0,
                  "compute_mode": 3, "mig_mode": null, "max_mig": 0, "mig": [],
                  "processes": [{"pid": 123, "used_mib": 500}], "errors": {"nvmlDeviceGetMemoryInfo": 4}}]}

Processes of a test session share allocations through the file named by ``FAKE_PYNVML_STATE`` (JSON
lines): ``fake_allocate(mib)`` is what a CUDA allocation does in the calling process, on the first GPU
of its ``CUDA_VISIBLE_DEVICES`` (a UUID or an index, as CUDA reads it); it raises ``FakeOutOfMemoryError``
("CUDA out of memory", as torch words it) when the device has no room. Every process reading the fake
sees those allocations in the device's used memory and process list while their process lives; a
process that exited has given its memory back, as the driver does.

``mig_mode`` null means the device does not support MIG (``NVMLError_NotSupported``); ``mig`` lists the
instances by slot (null for an empty slot), each with uuid, total_mib and used_mib; ``errors`` maps a
function name to the NVML error code that function raises for this device (``nvmlDeviceGetHandleByIndex``
included). ``init_error`` is the code ``nvmlInit`` raises (12: library not found, 9: driver not loaded).
"""

import json
import os
import string
import sys
import time
from types import SimpleNamespace

NVML_SUCCESS = 0
NVML_ERROR_UNINITIALIZED = 1
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NO_PERMISSION = 4
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_GPU_IS_LOST = 15
NVML_ERROR_UNKNOWN = 999

NVML_COMPUTEMODE_DEFAULT = 0
NVML_COMPUTEMODE_EXCLUSIVE_THREAD = 1
NVML_COMPUTEMODE_PROHIBITED = 2
NVML_COMPUTEMODE_EXCLUSIVE_PROCESS = 3
NVML_DEVICE_MIG_DISABLE = 0
NVML_DEVICE_MIG_ENABLE = 1

_STRINGS = {
    NVML_ERROR_UNINITIALIZED: "Uninitialized",
    NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument",
    NVML_ERROR_NOT_SUPPORTED: "Not Supported",
    NVML_ERROR_NO_PERMISSION: "Insufficient Permissions",
    NVML_ERROR_NOT_FOUND: "Not Found",
    NVML_ERROR_DRIVER_NOT_LOADED: "Driver Not Loaded",
    NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
    NVML_ERROR_GPU_IS_LOST: "GPU is lost",
    NVML_ERROR_UNKNOWN: "Unknown Error",
}


class NVMLError(Exception):
    _valClassMapping: dict = {}

    def __new__(cls, value):
        if cls is NVMLError:
            cls = NVMLError._valClassMapping.get(value, cls)
        obj = Exception.__new__(cls)
        obj.value = value
        return obj

    def __str__(self):
        return _STRINGS.get(self.value, f"NVML Error with code {self.value}")

    def __eq__(self, other):
        return self.value == other.value

    __hash__ = Exception.__hash__


def _error_classes():
    """NVMLError_NotSupported and friends, named the way the real binding names them."""
    module = sys.modules[__name__]
    for name in [n for n in dir(module) if n.startswith("NVML_ERROR_")]:
        value = getattr(module, name)
        cls_name = "NVMLError_" + string.capwords(name.replace("NVML_ERROR_", ""), "_").replace("_", "")
        cls = type(cls_name, (NVMLError,), {"__new__": lambda c, *args, _v=value: NVMLError.__new__(c, _v)})
        setattr(module, cls_name, cls)
        NVMLError._valClassMapping[value] = cls


_error_classes()

MACHINE: dict = {}
_init_count = 0


def configure(machine: dict) -> None:
    """Replace the machine this module describes (and forget any nvmlInit)."""
    global _init_count
    MACHINE.clear()
    MACHINE.update({"driver": "550.54.15", "init_error": None, "devices": []})
    MACHINE.update(machine)
    _init_count = 0


def init_count() -> int:
    """How many nvmlInit calls are not matched by nvmlShutdown yet."""
    return _init_count


def fake_create_context(pid: int, index: int = 0, used_mib: int = 500) -> None:
    """What the driver shows when process ``pid`` creates a CUDA context on device ``index``."""
    MACHINE["devices"][index].setdefault("processes", []).append({"pid": pid, "used_mib": used_mib})


class FakeOutOfMemoryError(RuntimeError):
    """What torch.OutOfMemoryError says, raised by ``fake_allocate``."""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _shared() -> list[dict]:
    """Allocations held now, from FAKE_PYNVML_STATE: {"pid", "uuid", "used_mib"}.

    A process's memory is held while it lives and, when it allocated with ``linger_s``, that long after
    a reader first saw it gone (the driver frees a dead process's memory asynchronously).
    """
    path = os.environ.get("FAKE_PYNVML_STATE")
    if not path or not os.path.exists(path):
        return []
    with open(path) as fh:
        entries = [json.loads(line) for line in fh if line.strip()]
    gone = {}
    for e in entries:
        if "gone_at" in e:
            gone[e["pid"]] = min(gone.get(e["pid"], e["gone_at"]), e["gone_at"])
    held = []
    for e in entries:
        if "uuid" not in e:
            continue
        if _alive(e["pid"]):
            held.append(e)
        elif e.get("linger_s"):
            if e["pid"] not in gone:
                gone[e["pid"]] = time.time()
                with open(path, "a") as fh:
                    fh.write(json.dumps({"pid": e["pid"], "gone_at": gone[e["pid"]]}) + "\n")
            if time.time() < gone[e["pid"]] + e["linger_s"]:
                held.append(e)
    return held


def _device_processes(device: dict) -> list[dict]:
    shared = [{"pid": e["pid"], "used_mib": e["used_mib"]} for e in _shared() if e["uuid"] == device["uuid"]]
    return list(device.get("processes", [])) + shared


def fake_allocate(used_mib: int, linger_s: float = 0.0) -> None:
    """This process allocates ``used_mib`` on its first visible GPU (shared through FAKE_PYNVML_STATE),
    held until ``linger_s`` seconds after it exits."""
    selector = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip()
    devices = MACHINE["devices"]
    device = devices[int(selector)] if selector.isdigit() else next(
        d for d in devices if d["uuid"].startswith(selector))
    used = device.get("used_mib", 0) + sum(e["used_mib"] for e in _shared() if e["uuid"] == device["uuid"])
    if used + used_mib > device["total_mib"]:
        raise FakeOutOfMemoryError(
            f"CUDA out of memory. Tried to allocate {used_mib} MiB. GPU 0 has a total capacity of "
            f"{device['total_mib']} MiB of which {device['total_mib'] - used} MiB is free.")
    with open(os.environ["FAKE_PYNVML_STATE"], "a") as fh:
        entry = {"pid": os.getpid(), "uuid": device["uuid"], "used_mib": used_mib, "linger_s": linger_s}
        fh.write(json.dumps(entry) + "\n")


def _check_init():
    if _init_count <= 0:
        raise NVMLError(NVML_ERROR_UNINITIALIZED)


def _raise_if(device: dict, function: str) -> None:
    code = device.get("errors", {}).get(function)
    if code is not None:
        raise NVMLError(code)


class _Handle:
    def __init__(self, device: dict, parent: dict | None = None):
        self.device = device
        self.parent = parent


def nvmlInit():
    global _init_count
    if MACHINE.get("init_error") is not None:
        raise NVMLError(MACHINE["init_error"])
    _init_count += 1


def nvmlShutdown():
    global _init_count
    _check_init()
    _init_count -= 1


def nvmlSystemGetDriverVersion():
    _check_init()
    return MACHINE["driver"].encode()


def nvmlDeviceGetCount():
    _check_init()
    return len(MACHINE["devices"])


def nvmlDeviceGetHandleByIndex(index):
    _check_init()
    if not 0 <= index < len(MACHINE["devices"]):
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
    device = MACHINE["devices"][index]
    _raise_if(device, "nvmlDeviceGetHandleByIndex")
    return _Handle(device)


def nvmlDeviceGetUUID(handle):
    _check_init()
    return handle.device["uuid"]


def nvmlDeviceGetName(handle):
    _check_init()
    name = handle.device.get("name") or f"{handle.parent['name']} MIG"  # MIG instances may leave it out
    return name.encode()


def nvmlDeviceGetMemoryInfo(handle, version=None):
    _check_init()
    _raise_if(handle.device, "nvmlDeviceGetMemoryInfo")
    shared = sum(e["used_mib"] for e in _shared() if e["uuid"] == handle.device["uuid"])
    total, used = handle.device["total_mib"] << 20, (handle.device.get("used_mib", 0) + shared) << 20
    return SimpleNamespace(total=total, used=used, free=total - used)


def nvmlDeviceGetComputeMode(handle):
    _check_init()
    if handle.parent is not None:  # MIG devices have no compute mode of their own
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    _raise_if(handle.device, "nvmlDeviceGetComputeMode")
    return handle.device.get("compute_mode", NVML_COMPUTEMODE_DEFAULT)


def nvmlDeviceGetMigMode(device):
    _check_init()
    if device.device.get("mig_mode") is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return [device.device["mig_mode"], device.device["mig_mode"]]


def nvmlDeviceGetMaxMigDeviceCount(device):
    _check_init()
    return device.device.get("max_mig", 0)


def nvmlDeviceGetMigDeviceHandleByIndex(device, index):
    _check_init()
    slots = device.device.get("mig", [])
    if index >= len(slots) or slots[index] is None:
        raise NVMLError(NVML_ERROR_NOT_FOUND)
    return _Handle(slots[index], parent=device.device)


def nvmlDeviceGetComputeRunningProcesses(handle):
    _check_init()
    _raise_if(handle.device, "nvmlDeviceGetComputeRunningProcesses")
    return [SimpleNamespace(pid=p["pid"], gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF,
                            usedGpuMemory=None if p.get("used_mib") is None else p["used_mib"] << 20)
            for p in _device_processes(handle.device)]


configure(json.loads(os.environ.get("FAKE_PYNVML") or "{}"))
