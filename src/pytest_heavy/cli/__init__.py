"""The ``pytest-heavy`` command: ``doctor``, ``tier``, ``split`` and ``mps``.

``doctor`` reads the project's pytest configuration the way a session would (ini keys, -p plugins,
``--heavy-assume``), so what it prints is what ``pytest`` would decide here. Usage errors exit 2, as
argparse's own do; a reader that leaves early (``| head``) ends the command quietly with status 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from importlib import metadata
from typing import Any

import pytest

from .. import assume, gating, markers, tiers
from ..hardware import Hardware
from ..settings import ENABLE_ENV, Settings, enabled, load, value
from . import mps, plan, split

EXIT_USAGE = 2  # argparse's status for usage errors, used for every usage error of this command
DOCTOR_SCHEMA = 1  # `doctor --json` layout version: bumped only when a key changes meaning or goes away


def _settings(pytest_args: list[str]) -> Any:
    config = pytest.Config.fromdictargs({}, ["-p", "no:cacheprovider", *pytest_args])
    return load(config), config


def tier_markexprs(gpu_markers: list[str]) -> dict[str, str | None]:
    """Each tier's ``-m`` expression (None: no -m, the default tier)."""
    return {"fast": "not qualitative", "default": None, "qualitative": "qualitative", "slow": "slow",
            "gpu": " or ".join(gpu_markers)}


def doctor_document(pytest_args: list[str]) -> dict[str, Any]:
    settings, config = _settings(pytest_args)
    on, why = enabled(config)
    hw = assume.probe(settings.assume or None)
    gpu_markers = sorted(set(markers.gpu_markers(settings)))
    names = sorted(markers.documented() | set(markers.configured(settings)) | set(gpu_markers))
    amounts = {name: kind for name, kind in settings.resource_markers}
    verdicts: dict[str, dict[str, Any]] = {}
    for name in names:
        decorator = getattr(pytest.mark, name)  # the public API: pytest.Mark(...) is private
        # An amount-bearing marker is shown with its smallest amount (RAM: ini heavy_ram_gib);
        # "amounts" below says how far each goes here.
        needs_amount = name == "requires_vram" or name in amounts
        amount = settings.ram_gib if amounts.get(name) == "ram" else 1
        mark = (decorator(amount) if needs_amount else decorator).mark
        reason = gating.verdict(markers.read_needs({mark.name: mark}, settings), settings, hw)
        if reason is None and name == "slow":
            reason = tiers.slow_reason(config, settings)  # a tier's deselection, which doctor shows too
        verdicts[name] = {"runs": reason is None, "reason": reason,
                          "isolated": name in settings.isolate_markers, "gpu": name in gpu_markers}
    return {
        "schema": DOCTOR_SCHEMA,
        "enabled": on,
        "enabled_by": why,
        "hardware": json.loads(hw.to_json()),
        "summary": hw.summary(),
        "parent_trap_risk": hw.parent_trap_risk,
        "cicd": settings.cicd,
        "isolate": settings.isolate,
        "start": settings.start,
        "tiers": {name: f'pytest -m "{expr}"' if expr else "pytest (qualitative included, slow deselected)"
                  for name, expr in tier_markexprs(gpu_markers).items()},  # gpu: every marker implying a GPU
        "markers": verdicts,
        "amounts": amounts_here(hw),
        "clashes": clashes(config, settings),
    }


def amounts_here(hw: Hardware) -> dict[str, float]:
    """The largest amounts the amount-bearing markers may ask for and still run here."""
    return {"gpus": len(hw.gpus),
            "vram_gib": round(max((g.total_gib for g in hw.gpus), default=0.0), 1),
            "ram_gib": round(hw.ram_total_mib / 1024, 1)}


def _registered(config: pytest.Config) -> dict[str, str]:
    """The markers the project registers itself (ini ``markers`` lines): name -> its help text."""
    found = {}
    for line in config.getini("markers"):
        spec, _, help_ = line.partition(":")
        found[spec.split("(")[0].strip()] = help_.strip()
    return found


def _ini_line(key: str, values: list[str]) -> str:
    return f"{key} = {' '.join(values)}".rstrip()


def clashes(config: pytest.Config, settings: Settings) -> list[dict[str, str]]:
    """Markers the project registers itself that pytest-heavy gives a meaning by default, each with the
    one ini line that takes that meaning away (only where the project has not set the key itself).

    A project that names a backend ``vllm`` may run some of its tests on CPU, or talk to vLLM through a
    server; its own registration says the marker is its own, and nothing else in a run would.
    """
    found = []
    for name, help_ in sorted(_registered(config).items()):
        rules: list[tuple[str, str, list[str]]] = []  # (ini key, what the default does, its new value)
        if name in settings.gpu_markers:
            rules.append(("heavy_gpu_markers", "implies a GPU (gated, routed)",
                          [m for m in settings.gpu_markers if m != name]))
        if name in settings.isolate_markers:
            rules.append(("heavy_isolate_markers", "isolates its module in a child process",
                          [m for m in settings.isolate_markers if m != name]))
        packages = [f"{m}={p}" for m, p in settings.marker_packages]
        for marker, package in settings.marker_packages:
            if marker == name:
                rules.append(("heavy_marker_packages", f"needs the {package} package importable here",
                              [p for p in packages if p != f"{marker}={package}"]))
        if name == "slow" and settings.skip_slow_by_default:
            rules.append(("heavy_skip_slow_by_default", "is deselected by default", ["false"]))
        for key, does, new in rules:
            if value(config, key) is None:  # the project's own setting is deliberate
                found.append({"marker": name, "registered": help_, "default": does, "key": key,
                              "ini": _ini_line(key, new)})
    return found


def doctor(args: argparse.Namespace) -> int:
    if args.plan:
        return doctor_plan(args)
    try:
        doc = doctor_document(args.pytest_args)
    except (pytest.UsageError, assume.AssumeError) as exc:
        print(f"pytest-heavy doctor: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    if doc["enabled"]:
        print(f"pytest-heavy: on here ({doc['enabled_by']})")
    else:
        print(f"pytest-heavy is off here ({doc['enabled_by']}): add heavy_enabled = true to the project's "
              f"pytest configuration, or run pytest with a --heavy-* option or {ENABLE_ENV}=1. "
              "What follows is what it would do once enabled.")
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
              "Start MPS (eval \"$(pytest-heavy mps start)\") or split the run (pytest-heavy split N).")
    else:
        print("parent trap: no risk here")
    print("tiers:")
    for name, cmd in doc["tiers"].items():
        print(f"  {name:12} {cmd}")
    amounts = doc["amounts"]
    gpu_amounts = (f"requires_gpu(count<={amounts['gpus']}), requires_vram(gib<={amounts['vram_gib']:g})"
                   if amounts["gpus"] else "no GPU here")
    print(f"amounts here: {gpu_amounts}, requires_heavy_ram(gib<={amounts['ram_gib']:g})")
    if doc["clashes"]:
        print("markers the project registers itself, which pytest-heavy gives a meaning by default:")
        for c in doc["clashes"]:
            print(f"  {c['marker']} (registered: {c['registered'] or 'no help text'!r}) {c['default']}; "
                  f"if that is not its meaning here, set: {c['ini']}")
    print("markers here:")
    for name, v in doc["markers"].items():
        flags = ", ".join(f for f, on in (("isolated", v["isolated"]), ("GPU", v["gpu"])) if on)
        state = "runs" if v["runs"] else f"skipped: {v['reason']}"
        print(f"  {name:24} {state}{f'  [{flags}]' if flags else ''}")
    return 0


def doctor_plan(args: argparse.Namespace) -> int:
    try:
        doc, error = plan.plan_document(args.pytest_args)
    except (pytest.UsageError, assume.AssumeError) as exc:
        error, doc = str(exc), None
    if doc is None:
        print(f"pytest-heavy doctor --plan: {error}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print(json.dumps(doc, indent=2, sort_keys=True))
    else:
        plan.print_plan(doc)
    return 0


def tier(args: argparse.Namespace) -> int:
    """Run one tier as ``python -m pytest``; a tier with no tests here is a fine outcome, not exit 5."""
    gpu_markers: list[str] = []
    if args.name == "gpu":  # the only tier whose expression depends on the configuration
        try:
            gpu_markers = sorted(set(markers.gpu_markers(_settings(args.pytest_args)[0])))
        except pytest.UsageError as exc:
            print(f"pytest-heavy tier: {exc}", file=sys.stderr)
            return EXIT_USAGE
    expr = tier_markexprs(gpu_markers)[args.name]
    command = [sys.executable, "-m", "pytest", *(["-m", expr] if expr else []), *args.pytest_args]
    status = subprocess.call(command)
    if status == pytest.ExitCode.NO_TESTS_COLLECTED:
        print(f"pytest-heavy tier {args.name}: the tier is empty here (no test selected); exit 0", flush=True)
        return 0
    return status


def version() -> str:
    try:
        return metadata.version("pytest-heavy")
    except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pytest-heavy", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("doctor", help="what this machine can run, and why")
    p.add_argument("--json", action="store_true", help="print a stable JSON document")
    p.add_argument("--plan", action="store_true",
                   help="collect the project and print how --heavy-workers auto would pack its heavy modules "
                        "from the recorded peaks (runs nothing)")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER,
                   help="pytest options to read (e.g. --heavy-assume gpus=1x80GiB)")
    p.set_defaults(func=doctor)
    p = sub.add_parser("tier", help="run one tier; a tier with no tests here exits 0 with a line saying so",
                       description="Run `python -m pytest -m EXPR [pytest args]` for the tier; pytest's exit "
                                   "5 (no tests) becomes 0 with one line saying the tier is empty.")
    p.add_argument("name", choices=tuple(tier_markexprs([])), help="the tier")
    p.add_argument("pytest_args", nargs=argparse.REMAINDER, help="pytest arguments (after --)")
    p.set_defaults(func=tier)
    mps.add_parser(sub)
    split.add_parser(sub)
    return parser


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    try:
        args, rest = parser.parse_known_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error (2): argparse has printed it
        return exc.code if isinstance(exc.code, int) else 0
    if rest:
        args.pytest_args = [*rest, *getattr(args, "pytest_args", [])]
    if getattr(args, "pytest_args", None) and args.pytest_args[0] == "--":
        args.pytest_args = args.pytest_args[1:]
    return int(args.func(args))


def main(argv: list[str] | None = None) -> int:
    try:
        status = _run(argv)
        sys.stdout.flush()  # here, not at interpreter exit, where a broken pipe is reported as ignored
        return status
    except BrokenPipeError:  # `pytest-heavy doctor | head`: the reader left, which is not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0

