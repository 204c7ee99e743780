"""Every option and ini key, declared once and parsed once into a frozen ``Settings``.

Bad values become ``pytest.UsageError`` naming the option or ini key, so a typo in pyproject.toml
fails the run at start-up instead of silently changing what runs.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import warnings
from dataclasses import dataclass

import pytest

from . import wire

ASSUME_ENV = "PYTEST_HEAVY_ASSUME"  # --heavy-assume's value when the option is not given

ISOLATE_CHOICES = ("auto", "always", "never")
START_CHOICES = ("auto", "template", "fork", "spawn", "forkserver")
# The forkserver (a second interpreter) was replaced by the template process, forked from pytest itself;
# its name still selects it, so existing configurations keep working.
START_ALIASES = {"forkserver": "template"}
CLEANUP_CHOICES = ("auto", "always", "never")

ENABLE_ENV = "PYTEST_HEAVY"  # 1: this run opts in, 0: this run opts out, whatever the configuration says
TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")

# ini key -> (help, kind, default). Kinds: "scalar" (a string, a TOML number or a TOML boolean), "args"
# (a list, or one whitespace-separated string), "linelist" (a list, or one value a line). Every key is
# registered with the default None, so that ``value()`` tells a key the project set from one it did not:
# setting any of them is how a project opts in (``enabled``).
INI: dict[str, tuple[str, str, object]] = {
    "heavy_enabled": ("turn pytest-heavy on (true) or off (false) for this project", "scalar", None),
    "heavy_isolate": ("isolate heavy modules: auto, always or never", "scalar", "auto"),
    "heavy_start": ("how children start: auto, template, fork, spawn (forkserver: template)", "scalar",
                    "auto"),
    "heavy_isolate_markers": ("markers that make a module heavy (isolated)", "args",
                              ["requires_heavy_ram", "requires_gpu_isolation", "vllm"]),
    "heavy_gpu_markers": ("markers that imply a GPU (gated, routed)", "args",
                          ["requires_gpu", "huggingface", "vllm"]),
    "heavy_ram_gib": ("GiB of host RAM a requires_heavy_ram mark without an amount needs", "scalar", "48"),
    "heavy_resource_markers": ("MARKER=ram|vram|gpus lines: project markers whose first argument is an "
                               "amount (GiB of RAM, GiB of VRAM, GPUs), read like requires_heavy_ram(gib), "
                               "requires_vram(gib), requires_gpu(count)", "linelist", []),
    "heavy_marker_packages": ("MARKER=PACKAGE lines: a test with the marker is skipped where the package "
                              "cannot be imported (empty: no package gating)", "linelist", ["vllm=vllm"]),
    "heavy_apple_mps_is_gpu": ("a GPU marker asking for one GPU (no VRAM amount) runs on Apple silicon's "
                               "MPS device", "scalar", False),
    "heavy_skip_slow_by_default": ("deselect slow tests unless -m names slow or --heavy-run-slow", "scalar",
                                   True),
    "heavy_env": ("KEY=VALUE lines added to children's environment", "linelist", []),
    "heavy_preload": ("more modules the template imports once (e.g. torch)", "args", []),
    "heavy_timeout_s": ("seconds an isolated module may run (0: no limit)", "scalar", "0"),
    "heavy_release_timeout_s": ("seconds to wait for GPU memory to be released after a child", "scalar",
                                "30"),
    "heavy_vram_tolerance_mib": ("MiB above the baseline that still counts as released", "scalar", "256"),
    "heavy_examples_dirs": ("directories whose `# pytest:` scripts run as tests", "args", ["docs/examples"]),
    "heavy_examples_cwd": ("examples' working directory: rootdir or file", "scalar", "rootdir"),
    "heavy_example_timeout_s": ("seconds an example may run", "scalar", "600"),
    "heavy_optional_modules": ("modules whose absence skips an example (also when an ImportError wraps it)",
                               "args", []),
    "heavy_examples_skip_on": ("lines: an exception class name (ImportError), optionally ': REGEX' its "
                               "message must match, or exit=N: what else skips an example", "linelist", []),
    "heavy_example_ids": ("an example's test name: example (x.py::example) or file (x.py::x.py)", "scalar",
                          "example"),
    "heavy_durations_path": ("JSON file of test durations --heavy-split reads and --heavy-store-durations "
                             "writes", "scalar", ".test_durations"),
    "heavy_workers": ("heavy modules run at once: a number, or auto (packed onto GPUs and RAM by recorded "
                      "peaks)", "scalar", "1"),
    "heavy_cleanup": ("gc/empty_cache after heavy and GPU tests: auto (CICD=1), always, never",
                      "scalar", "auto"),
    "heavy_junit_properties": ("add each isolated module's peak memory to its tests' junit properties",
                               "scalar", False),
}

# pytest >= 9.2 accepts a union of ini types (``str | float | bool``), which lets native TOML numbers and
# booleans through its type check; older versions get "string" and ``value`` falls back for native TOML
# (pytest 9.0, 9.1; pytest 8 has no native TOML mode and hands every scalar over as a string).
_UNION = pytest.version_tuple >= (9, 2)
_INI_TYPES: dict[str, object] = {
    "scalar": str | float | bool if _UNION else "string",
    "args": "args",
    "linelist": "linelist",
}


def add_options(parser: pytest.Parser) -> None:
    """Every option defaults to None, so that ``enabled`` tells one given (on the command line, in
    ``addopts`` or ``PYTEST_ADDOPTS``) from one left alone; ``load`` applies the real defaults."""
    group = parser.getgroup("heavy", "pytest-heavy: tiers, hardware gating, heavy-module isolation "
                                     "(any --heavy-* option enables pytest-heavy for the run)")
    group.addoption("--heavy-isolate", choices=ISOLATE_CHOICES, default=None,
                    help="run heavy modules in child processes: auto (2+ heavy modules), always, never")
    group.addoption("--heavy-start", choices=START_CHOICES, default=None,
                    help="how children start: auto, template, fork, spawn (forkserver: an alias of template)")
    group.addoption("--heavy-workers", default=None, metavar="N|auto",
                    help="heavy modules run at once: N, or auto to pack them onto the GPUs and RAM by "
                         "their recorded peaks (ini heavy_workers; default 1)")
    group.addoption("--heavy-timeout", type=float, default=None, metavar="S",
                    help="seconds an isolated module may run before its stacks are dumped and it is killed")
    group.addoption("--heavy-report", default=None, metavar="PATH",
                    help="write the heavy-modules table as JSON")
    group.addoption("--heavy-assume", default=None, metavar="SPEC",
                    help="plan for another machine, e.g. gpus=1x80GiB,ram=128GiB,"
                         "compute_mode=exclusive_process,mps=off,apple_mps=on (env PYTEST_HEAVY_ASSUME)")
    group.addoption("--heavy-split", default=None, metavar="i/N",
                    help="keep subset i of N (1-based), balanced by recorded durations")
    group.addoption("--heavy-split-by", choices=("item", "module"), default=None,
                    help="split unit: single items (default) or whole modules/example directories")
    group.addoption("--heavy-store-durations", action="store_true", default=None,
                    help="write this run's durations and module peaks into the heavy_durations_path file "
                         "(the pytest cache is written on every run)")
    group.addoption("--heavy-junit-properties", action="store_true", default=None,
                    help="add each isolated module's peak memory to its tests' junit <properties>")
    group.addoption("--heavy-run-slow", action="store_true", default=None, help="include tests marked slow")
    group.addoption("--heavy-ignore-gpu-check", action="store_true", default=None,
                    help="run GPU-marked tests even where no suitable GPU is seen")
    group.addoption("--heavy-ignore-ram-check", action="store_true", default=None,
                    help="run requires_heavy_ram tests whatever the RAM")
    group.addoption("--heavy-skip-resource-checks", action="store_true", default=None,
                    help="both --heavy-ignore-gpu-check and --heavy-ignore-ram-check")
    group.addoption("--heavy-report-html", default=None, metavar="PATH",
                    help="write a self-contained HTML report: memory timeline per module and the heavy table")
    group.addoption("--heavy-find-leaks", action="store_true", default=None,
                    help="run everything in this process and name, per module, the memory still held "
                         "after its last teardown and what holds it")
    for name, (help_, kind, default) in INI.items():
        parser.addini(name, f"{help_} (default: {_shown(default)})", type=_INI_TYPES[kind],  # type: ignore[arg-type]
                      default=None)


def _shown(default: object) -> str:
    if isinstance(default, list):
        return " ".join(default) or "none"
    return "unset" if default is None else str(default).lower() if isinstance(default, bool) else str(default)


def value(config: pytest.Config, key: str) -> object:
    """The raw value the project set for ``key`` (str, number, bool or list), or None when it set none."""
    try:
        return config.getini(key)
    except (pytest.UsageError, TypeError, ValueError):
        # pytest 9.0 and 9.1 type-check native TOML strictly and know no unions: a number or boolean
        # in [tool.pytest] / pytest.toml fails the "string" type (with a TypeError there; 9.2 wraps
        # errors in UsageError). Their (deprecated) raw mapping still holds the native value.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = config.inicfg.get(key)
        if raw is None:
            raise
        return raw


def _scalar(config: pytest.Config, key: str) -> object:
    raw = value(config, key)
    return INI[key][2] if raw is None else raw


def _bool(config: pytest.Config, key: str) -> bool:
    raw = _scalar(config, key)
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text not in TRUE + FALSE:
        raise pytest.UsageError(f"ini {key} = {raw!r}: expected true or false")
    return text in TRUE


def _list(config: pytest.Config, key: str) -> list[str]:
    raw = value(config, key)
    if raw is None:
        return list(INI[key][2])  # type: ignore[call-overload]
    if isinstance(raw, str):
        if INI[key][1] == "args":
            return shlex.split(raw)
        return [line.strip() for line in raw.splitlines() if line.strip()]
    if not isinstance(raw, list) or not all(isinstance(v, str) for v in raw):
        raise pytest.UsageError(f"ini {key} = {raw!r}: expected a list of strings")
    return raw


def enabled(config: pytest.Config) -> tuple[bool, str]:
    """Whether pytest-heavy acts in this session, and what decided it (for the header line).

    Installing the plugin into a shared environment must not change another project's run: it acts only
    where a project opted in (any ``heavy_*`` ini key; ``heavy_enabled = false`` opts out again) or a run
    did (any ``--heavy-*`` option, ``PYTEST_HEAVY=1``). Children of an enabled parent always act.
    """
    if wire.in_child():
        return True, "child"
    env = os.environ.get(ENABLE_ENV, "").strip().lower()
    if env in TRUE + FALSE:
        return env in TRUE, f"{ENABLE_ENV}={env}"
    given = [name for name, given_value in vars(config.option).items()
             if name.startswith("heavy_") and given_value is not None]
    if given:
        return True, "--" + given[0].replace("_", "-")
    if value(config, "heavy_enabled") is not None:
        on = _bool(config, "heavy_enabled")
        return on, f"heavy_enabled = {str(on).lower()}"
    keys = [k for k in INI if value(config, k) is not None]
    return bool(keys), keys[0] if keys else "no heavy_* key in the pytest configuration"


@dataclass(frozen=True)
class Settings:
    isolate: str
    start: str
    workers: int  # children at once with the count scheduler; unused when ``packing``
    packing: bool  # --heavy-workers auto: pack children by recorded peaks (isolation/schedule/packing.py)
    timeout: float  # 0 = none
    report_path: str
    assume: str
    split: tuple[int, int] | None
    split_by: str
    run_slow: bool
    ignore_gpu_check: bool
    ignore_ram_check: bool
    isolate_markers: tuple[str, ...]
    gpu_markers: tuple[str, ...]
    ram_gib: float
    skip_slow_by_default: bool
    env: tuple[tuple[str, str], ...]
    preload: tuple[str, ...]
    release_timeout: float
    vram_tolerance_mib: int
    resource_markers: tuple[tuple[str, str], ...]  # (project marker, "ram" | "vram" | "gpus")
    marker_packages: tuple[tuple[str, str], ...]  # (marker, package it needs)
    apple_mps_is_gpu: bool
    examples_dirs: tuple[str, ...]
    examples_cwd: str
    example_timeout: float
    optional_modules: tuple[str, ...]
    examples_skip_on: tuple[str, ...]  # validated lines of heavy_examples_skip_on
    example_ids: str  # "example" or "file"
    durations_path: str
    store_durations: bool  # --heavy-store-durations: also write the committed file, not only the cache
    junit_properties: bool
    report_html: str  # --heavy-report-html
    find_leaks: bool  # --heavy-find-leaks (in the parent: one process, isolation off)
    cleanup: bool
    cicd: bool
    child: bool

    @property
    def template(self) -> bool:
        """Whether the template process is forked at session start (``auto`` prefers it where fork exists)."""
        return self.start in ("auto", "template")


def cicd_mode(env: dict[str, str] | None = None) -> bool:
    return (env if env is not None else os.environ).get("CICD", "").strip().lower() in ("1", "true", "yes")


def _number(config: pytest.Config, key: str, cast: type = float, minimum: float = 0) -> float:
    raw = _scalar(config, key)
    try:
        if isinstance(raw, bool):
            raise ValueError
        number = cast(str(raw).strip())
    except ValueError:
        raise pytest.UsageError(f"ini {key} = {raw!r}: expected a number") from None
    if not math.isfinite(number):  # nan compares false with everything: it would pass any bound below
        raise pytest.UsageError(f"ini {key} = {raw!r}: expected a finite number")
    if number < minimum:
        raise pytest.UsageError(f"ini {key} = {raw!r}: must be >= {minimum}")
    return number


def _choice(config: pytest.Config, key: str, choices: tuple[str, ...]) -> str:
    choice = str(_scalar(config, key)).strip().lower()
    if choice not in choices:
        raise pytest.UsageError(f"ini {key} = {choice!r}: expected one of {', '.join(choices)}")
    return choice


def parse_split(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not (1 <= int(m.group(1)) <= int(m.group(2))):
        raise pytest.UsageError(f"--heavy-split {text!r}: expected i/N with 1 <= i <= N, e.g. 2/4")
    return int(m.group(1)), int(m.group(2))


def parse_workers(config: pytest.Config) -> tuple[int, bool]:
    """(count, packing) from --heavy-workers or ini heavy_workers: a whole number >= 1, or ``auto``."""
    given = config.option.heavy_workers
    source = f"--heavy-workers {given}" if given is not None else None
    raw = str(given if given is not None else _scalar(config, "heavy_workers")).strip().lower()
    if source is None:
        source = f"ini heavy_workers = {raw!r}"
    if raw == "auto":
        return 1, True
    if not raw.isdigit() or int(raw) < 1:
        raise pytest.UsageError(f"{source}: expected a whole number >= 1 or auto")
    return int(raw), False


def _env_lines(lines: list[str]) -> tuple[tuple[str, str], ...]:
    pairs = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, text = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key.strip()):
            raise pytest.UsageError(f"ini heavy_env line {line!r}: expected KEY=VALUE")
        pairs.append((key.strip(), text.strip()))
    return tuple(pairs)


RESOURCE_KINDS = ("ram", "vram", "gpus")


def _pairs(config: pytest.Config, key: str,
           values: tuple[str, ...] | None = None) -> tuple[tuple[str, str], ...]:
    """``NAME=VALUE`` lines (``NAME = VALUE`` too); with ``values``, VALUE must be one of them."""
    pairs = []
    for line in _list(config, key):
        name, sep, text = (part.strip() for part in line.partition("="))
        if not sep or not name.isidentifier() or not text or (values is not None and text not in values):
            expected = f"MARKER={'|'.join(values)}" if values else "MARKER=PACKAGE"
            raise pytest.UsageError(f"ini {key} line {line!r}: expected {expected}")
        pairs.append((name, text))
    return tuple(pairs)


def _skip_rules(config: pytest.Config) -> tuple[str, ...]:
    """heavy_examples_skip_on lines, checked here so that a typo is a usage error, not a failing example."""
    rules = []
    for line in _list(config, "heavy_examples_skip_on"):
        head, _, pattern = (part.strip() for part in line.partition(":"))
        if re.fullmatch(r"exit\s*=\s*\d+", head) and not pattern:
            rules.append(head.replace(" ", ""))
            continue
        if not head.isidentifier():
            raise pytest.UsageError(f"ini heavy_examples_skip_on line {line!r}: expected an exception class "
                                    "name (ImportError), 'NAME: REGEX' or exit=N")
        try:
            re.compile(pattern)
        except re.error as exc:
            raise pytest.UsageError(f"ini heavy_examples_skip_on line {line!r}: bad pattern: {exc}") from None
        rules.append(f"{head}: {pattern}" if pattern else head)
    return tuple(rules)


def load(config: pytest.Config) -> Settings:
    """Read every option and ini key; raise UsageError naming the first bad one."""
    opt = config.option
    cicd = cicd_mode()
    isolate = opt.heavy_isolate or _choice(config, "heavy_isolate", ISOLATE_CHOICES)
    if cicd and opt.heavy_isolate is None and isolate == "auto":
        isolate = "always"
    find_leaks = bool(opt.heavy_find_leaks) and not wire.in_child()
    if find_leaks:
        isolate = "never"  # the leak finder watches every module in this one process, on purpose
    workers, packing = parse_workers(config)
    timeout = opt.heavy_timeout if opt.heavy_timeout is not None else _number(config, "heavy_timeout_s")
    if not (math.isfinite(timeout) and timeout >= 0):
        raise pytest.UsageError(f"--heavy-timeout {timeout}: expected a finite number >= 0 (0: no limit)")
    cleanup = _choice(config, "heavy_cleanup", CLEANUP_CHOICES)
    cwd = _choice(config, "heavy_examples_cwd", ("rootdir", "file"))
    start = opt.heavy_start or _choice(config, "heavy_start", START_CHOICES)
    return Settings(
        isolate=isolate,
        start=START_ALIASES.get(start, start),
        workers=workers,
        packing=packing,
        timeout=timeout,
        report_path=opt.heavy_report or "",
        assume=opt.heavy_assume or os.environ.get(ASSUME_ENV, ""),
        split=parse_split(opt.heavy_split) if opt.heavy_split else None,
        split_by=opt.heavy_split_by or "item",
        run_slow=bool(opt.heavy_run_slow),
        ignore_gpu_check=bool(opt.heavy_ignore_gpu_check or opt.heavy_skip_resource_checks),
        ignore_ram_check=bool(opt.heavy_ignore_ram_check or opt.heavy_skip_resource_checks),
        isolate_markers=tuple(_list(config, "heavy_isolate_markers")),
        gpu_markers=tuple(_list(config, "heavy_gpu_markers")),
        ram_gib=_number(config, "heavy_ram_gib"),
        skip_slow_by_default=_bool(config, "heavy_skip_slow_by_default"),
        env=_env_lines(_list(config, "heavy_env")),
        preload=tuple(_list(config, "heavy_preload")),
        release_timeout=_number(config, "heavy_release_timeout_s"),
        vram_tolerance_mib=int(_number(config, "heavy_vram_tolerance_mib", int)),
        resource_markers=_pairs(config, "heavy_resource_markers", RESOURCE_KINDS),
        marker_packages=_pairs(config, "heavy_marker_packages"),
        apple_mps_is_gpu=_bool(config, "heavy_apple_mps_is_gpu"),
        examples_dirs=tuple(_list(config, "heavy_examples_dirs")),
        examples_cwd=cwd,
        example_timeout=_number(config, "heavy_example_timeout_s"),
        optional_modules=tuple(_list(config, "heavy_optional_modules")),
        examples_skip_on=_skip_rules(config),
        example_ids=_choice(config, "heavy_example_ids", ("example", "file")),
        durations_path=str(_scalar(config, "heavy_durations_path")).strip(),
        store_durations=bool(opt.heavy_store_durations),
        junit_properties=bool(opt.heavy_junit_properties) or _bool(config, "heavy_junit_properties"),
        report_html=opt.heavy_report_html or "",
        find_leaks=find_leaks,
        cleanup=cleanup == "always" or (cleanup == "auto" and cicd),
        cicd=cicd,
        child=wire.in_child(),
    )
