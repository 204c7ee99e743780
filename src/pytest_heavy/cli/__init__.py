"""The ``pytest-heavy`` command: ``doctor``, ``split`` and ``mps``.

``doctor`` reads the project's pytest configuration the way a session would (ini keys, -p plugins,
``--heavy-assume``), so what it prints is what ``pytest`` would decide here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import pytest

from .. import gating, hardware, markers, tiers
from ..settings import load
from . import mps, plan, split


def _settings(pytest_args: list[str]) -> Any:
    config = pytest.Config.fromdictargs({}, ["-p", "no:cacheprovider", *pytest_args])
    return load(config), config


def doctor_document(pytest_args: list[str]) -> dict[str, Any]:
    settings, config = _settings(pytest_args)
    hw = hardware.probe(settings.assume or None)
    gpu_markers = sorted(set(gating.gpu_markers(settings)))
    names = sorted(markers.documented() | set(gpu_markers) | set(settings.isolate_markers))
    verdicts: dict[str, dict[str, Any]] = {}
    for name in names:
        mark = pytest.Mark(name, (1,) if name == "requires_vram" else (), {})
        reason = gating.verdict([mark], settings, hw)
        if reason is None and name == "slow":
            reason = tiers.slow_reason(config, settings)  # a tier's deselection, which doctor shows too
        verdicts[name] = {"runs": reason is None, "reason": reason,
                          "isolated": name in settings.isolate_markers, "gpu": name in gpu_markers}
    return {
        "hardware": json.loads(hw.to_json()),
        "summary": hw.summary(),
        "parent_trap_risk": hw.parent_trap_risk,
        "cicd": settings.cicd,
        "isolate": settings.isolate,
        "start": settings.start,
        "tiers": {
            "fast": 'pytest -m "not qualitative"',
            "default": "pytest (qualitative included, slow deselected)",
            "slow": "pytest -m slow",
            "gpu": f'pytest -m "{" or ".join(gpu_markers)}"',  # every marker that implies a GPU
        },
        "markers": verdicts,
    }


def doctor(args: argparse.Namespace) -> int:
    if args.plan:
        return doctor_plan(args)
    try:
        doc = doctor_document(args.pytest_args)
    except (pytest.UsageError, hardware.AssumeError) as exc:
        print(f"pytest-heavy doctor: {exc}", file=sys.stderr)
        return 4
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    print(f"machine: {doc['summary']}")
    gpus = doc["hardware"]["gpus"]
    for g in gpus:
        print(f"  GPU {g['index']}: {g['name']} {g['total_mib']} MiB total, {g['used_mib']} MiB used, "
              f"compute mode {g['compute_mode']}{' (MIG)' if g['mig'] else ''} [{g['uuid']}]")
    print(f"CI mode (CICD=1): {'on' if doc['cicd'] else 'off'}; isolation: {doc['isolate']}; "
          f"start method: {doc['start']}")
    if doc["parent_trap_risk"]:
        print("PARENT TRAP RISK: a GPU is in EXCLUSIVE_PROCESS mode and MPS is not running. "
              "A CUDA context in the pytest parent would make every GPU child fail with 'device busy'. "
              "Start MPS (make mps-start) or split the run (pytest-heavy split N).")
    else:
        print("parent trap: no risk here")
    print("tiers:")
    for name, cmd in doc["tiers"].items():
        print(f"  {name:8} {cmd}")
    print("markers here:")
    for name, v in doc["markers"].items():
        flags = ", ".join(f for f, on in (("isolated", v["isolated"]), ("GPU", v["gpu"])) if on)
        state = "runs" if v["runs"] else f"skipped: {v['reason']}"
        print(f"  {name:24} {state}{f'  [{flags}]' if flags else ''}")
    return 0


def doctor_plan(args: argparse.Namespace) -> int:
    try:
        doc, error = plan.plan_document(args.pytest_args)
    except (pytest.UsageError, hardware.AssumeError) as exc:
        error, doc = str(exc), None
    if doc is None:
        print(f"pytest-heavy doctor --plan: {error}", file=sys.stderr)
        return 4
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        plan.print_plan(doc)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pytest-heavy", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("doctor", help="what this machine can run, and why")
    p.add_argument("--json", action="store_true", help="print a stable JSON document")
    p.add_argument("--plan", action="store_true",
                   help="collect the project and print how --heavy-workers auto would pack its heavy modules "
                        "from the recorded peaks (runs nothing)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER,
                   help="pytest options to read (e.g. --heavy-assume gpus=1x80GiB)")
    p.set_defaults(func=doctor)
    mps.add_parser(sub)
    split.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest:
        args.pytest_args = [*rest, *getattr(args, "pytest_args", [])]
    try:
        return int(args.func(args))
    except BrokenPipeError:  # `pytest-heavy doctor | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0

