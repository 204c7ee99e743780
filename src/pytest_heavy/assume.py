"""``--heavy-assume SPEC`` (or ``PYTEST_HEAVY_ASSUME``): the parser, and the probe with the spec's fields
replacing what the machine has.

Kept apart from the probe (``hardware.py``), which only reads the machine: this module only reads a
spec. ``probe(spec)`` is what a session and ``doctor`` call.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from . import hardware
from .hardware import COMPUTE_MODES, GPU, Hardware


class AssumeError(ValueError):
    """A malformed --heavy-assume spec; the message names the field."""


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(TiB|TB|GiB|GB|MiB|MB|T|G|M)?\s*$", re.IGNORECASE)
_UNIT_MIB = {"t": 1024 * 1024, "tb": 1024 * 1024, "tib": 1024 * 1024, "g": 1024, "gb": 1024, "gib": 1024,
             "m": 1, "mb": 1, "mib": 1}
MAX_ASSUMED_GPUS = 1024
MAX_ASSUMED_MIB = float(1 << 40)  # an exbibyte


def parse_size_mib(text: str, what: str) -> int:
    """'80GiB' -> 81920. Plain numbers are GiB, the unit users think in for GPUs and RAM."""
    m = _SIZE.match(text)
    if not m:
        raise AssumeError(f"{what}: expected a size such as 80GiB or 512MiB, got {text!r}")
    unit = (m.group(2) or "gib").lower()
    mib = float(m.group(1)) * _UNIT_MIB[unit]
    if not mib < MAX_ASSUMED_MIB:  # 1e400 reads as inf
        raise AssumeError(f"{what}: {text!r} is more than any machine has (at most {MAX_ASSUMED_MIB:g} MiB)")
    return int(mib)


def _parse_gpus(value: str, compute_mode: str) -> tuple[GPU, ...]:
    value = value.strip().lower()
    if value in ("0", "none", "no", "off"):
        return ()
    m = re.match(r"^(\d+)\s*x\s*(.+)$", value)
    count, size = (int(m.group(1)), m.group(2)) if m else (1, value)
    if count > MAX_ASSUMED_GPUS:  # each one is an object, and every placement walks them all
        raise AssumeError(f"gpus: {count} GPUs is more than any machine has (at most {MAX_ASSUMED_GPUS})")
    total = parse_size_mib(size, "gpus")
    return tuple(GPU(index=i, uuid=f"GPU-assumed-{i}", name="assumed GPU", total_mib=total, used_mib=0,
                     compute_mode=compute_mode) for i in range(count))


_ON = ("on", "1", "true", "yes")
_OFF = ("off", "0", "false", "no")
_ASSUME_FIELDS = ("gpus", "ram", "compute_mode", "mps", "apple_mps", "cpus", "driver")


def parse_assume(spec: str) -> dict[str, str]:
    """Split 'gpus=1x80GiB,ram=128GiB,...' and check every field name and value."""
    fields: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        if not sep:
            raise AssumeError(f"{part!r}: expected FIELD=VALUE (fields: {', '.join(_ASSUME_FIELDS)})")
        if key not in _ASSUME_FIELDS:
            raise AssumeError(f"unknown field {key!r} (fields: {', '.join(_ASSUME_FIELDS)})")
        fields[key] = value.strip()
    if "compute_mode" in fields:
        mode = fields["compute_mode"].lower()
        if mode not in COMPUTE_MODES.values():
            choices = ", ".join(COMPUTE_MODES.values())
            raise AssumeError(f"compute_mode: expected one of {choices}, got {mode!r}")
        fields["compute_mode"] = mode
    for switch in ("mps", "apple_mps"):
        if switch in fields and fields[switch].lower() not in _ON + _OFF:
            raise AssumeError(f"{switch}: expected on or off, got {fields[switch]!r}")
    if "cpus" in fields and not fields["cpus"].isdigit():
        raise AssumeError(f"cpus: expected a whole number, got {fields['cpus']!r}")
    if "gpus" in fields:
        _parse_gpus(fields["gpus"], "default")
    if "ram" in fields:
        parse_size_mib(fields["ram"], "ram")
    return fields


def apply_assume(hw: Hardware, fields: dict[str, str]) -> Hardware:
    """The probe with the assumed fields replaced."""
    changes: dict[str, Any] = {"assumed": tuple(fields)}
    mode = fields.get("compute_mode")
    if "gpus" in fields:
        gpus = _parse_gpus(fields["gpus"], mode or "default")
        changes["gpus"] = gpus
        changes["gpu_reason"] = "" if gpus else "--heavy-assume gpus=0"
    elif mode:
        changes["gpus"] = tuple(dataclasses.replace(g, compute_mode=mode) for g in hw.gpus)
    if "ram" in fields:
        ram = parse_size_mib(fields["ram"], "ram")
        changes["ram_total_mib"] = changes["ram_available_mib"] = ram
    if "mps" in fields:
        changes["mps"] = fields["mps"].lower() in _ON
        changes["mps_detail"] = "assumed"
    if "apple_mps" in fields:  # Apple silicon's Metal device, as torch.backends.mps would report it
        changes["apple_mps"] = fields["apple_mps"].lower() in _ON
    if "cpus" in fields:
        changes["cpus"] = int(fields["cpus"])
    if "driver" in fields:
        changes["driver"] = fields["driver"]
    return dataclasses.replace(hw, **changes)


def probe(spec: str | None = None) -> Hardware:
    """Probe the machine once; fields named in ``spec`` are taken from it instead (a bad spec raises
    ``AssumeError`` before anything is probed)."""
    fields = parse_assume(spec) if spec else {}
    hw = hardware.probe(gpus_assumed="gpus" in fields)
    return apply_assume(hw, fields) if fields else hw
