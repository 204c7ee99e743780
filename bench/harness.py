"""Timing whole pytest runs side by side: interleaved repetitions, medians, spreads and paired ratios.

Why interleaved and paired: this machine is shared (2 cores, other jobs running), so its speed drifts
over seconds. Running every variant once per repetition, in a rotated order, exposes all variants to
the same drift; a ratio taken within one repetition (variant / baseline of that repetition) cancels
most of it, which the ratio of two medians taken minutes apart would not.

Each sample records wall time and the CPU time (user + system) of the whole process tree, read from
``RUSAGE_CHILDREN`` deltas: CPU time barely moves when another job takes a core, so it is the sharper
measure of work added; wall time is what a user waits for.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
# Variables that would change what a generated suite's pytest does, or where it writes.
SCRUBBED_PREFIXES = ("PYTEST_", "COV_CORE_", "COVERAGE_")
SCRUBBED = ("CICD", "PYTHONDONTWRITEBYTECODE", "PYTHONPATH")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment minus what would leak into the runs; bytecode writing is left on, as users have it."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED and not k.startswith(SCRUBBED_PREFIXES)}
    env.update(extra)
    return env


# --- one timed command --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    wall_s: float
    cpu_s: float  # user + system of every process the command started and waited for


class RunFailed(RuntimeError):
    """A benchmarked command did not exit as expected: its numbers would measure a failure."""


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(argv: Sequence[str], cwd: Path, env: dict[str, str] | None = None,
             expect: int = 0, timeout: float = 300) -> Sample:
    """Run one command to completion; raise RunFailed with its output tail on an unexpected exit."""
    cpu0, t0 = _children_cpu(), time.perf_counter()
    proc = subprocess.run(list(argv), cwd=cwd, env=env if env is not None else clean_env(),
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=timeout)
    wall, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if proc.returncode != expect:
        tail = proc.stdout.decode(errors="replace")[-3000:]
        raise RunFailed(f"{' '.join(argv)} (in {cwd}) exited {proc.returncode}, expected {expect}:\n{tail}")
    return Sample(wall, cpu)


@dataclass
class Variant:
    """One way of running the suite: one command, or several run back to back (one per module, say).

    ``check`` runs after every repetition (after the commands) and returns a note such as the start
    method the children really used; it raises when the run did not do what the variant claims.
    """

    label: str
    commands: list[list[str]]
    cwd: Path
    env: dict[str, str] = field(default_factory=clean_env)
    check: Callable[[], str] | None = None
    samples: list[Sample] = field(default_factory=list)
    parts: list[list[Sample]] = field(default_factory=list)  # per repetition, one sample per command
    notes: set[str] = field(default_factory=set)

    def run(self) -> Sample:
        parts = [run_once(cmd, self.cwd, self.env) for cmd in self.commands]
        total = Sample(sum(p.wall_s for p in parts), sum(p.cpu_s for p in parts))
        if self.check is not None:
            self.notes.add(self.check())
        self.samples.append(total)
        self.parts.append(parts)
        return total

    def walls(self) -> list[float]:
        return [s.wall_s for s in self.samples]

    def cpus(self) -> list[float]:
        return [s.cpu_s for s in self.samples]


def measure(variants: Sequence[Variant], reps: int, warmup: Sequence[Variant] | None = None,
            progress: str = "") -> None:
    """Warm up, then run every variant once per repetition, rotating the order.

    The warm-up run (by default the first variant's; unrecorded) writes the suite's bytecode and
    pytest's assertion-rewrite cache and fills the page cache, which every later run then shares.
    """
    for v in variants[:1] if warmup is None else warmup:
        v.run()
        v.samples.clear()
        v.parts.clear()
    for rep in range(reps):
        shift = rep % len(variants)
        for v in [*variants[shift:], *variants[:shift]]:
            v.run()
        if progress:
            log(f"{progress}: repetition {rep + 1}/{reps} done")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- driving a figure: its suite's folder, its pytest commands, checking what a run did ----------------


@contextmanager
def scratch(figure: str) -> Iterator[Path]:
    """A fresh temporary folder for a figure's generated suite, removed when the figure is done."""
    with tempfile.TemporaryDirectory(prefix=f"heavy-bench-{figure}-") as tmp:
        yield Path(tmp)


def pytest_argv(*args: str) -> list[str]:
    """``python -m pytest ARGS`` with this interpreter (the one pytest-heavy is installed in)."""
    return [PY, "-m", "pytest", *args]


def exited_0(record: dict) -> bool:
    return record["exit"] == "exit 0"


def report_check(path: Path, expected: int, *, kind: str | None = None,
                 passed: Callable[[dict], bool] = exited_0,
                 note: Callable[[list[dict]], str] = lambda records: "ok") -> Callable[[], str]:
    """A ``Variant.check`` for a run that wrote ``--heavy-report PATH``: the report holds ``expected`` rows
    (of ``kind``, module or example, when given) that all ``passed``, or the run measured something other
    than it claims and RunFailed says so; otherwise ``note(rows)``, e.g. the start methods children used."""

    def check() -> str:
        records = [r for r in json.loads(path.read_text())["modules"] if kind is None or r["kind"] == kind]
        if len(records) != expected or not all(passed(r) for r in records):
            what = f"{kind} rows" if kind else "rows"
            raise RunFailed(f"{path}: expected {expected} {what} that passed, got {records}")
        return note(records)

    return check


# --- statistics ---------------------------------------------------------------------------------------


def paired(values: Sequence[float], base: Sequence[float]) -> list[float]:
    """Per-repetition ratios value / baseline (same repetition, so the same machine load)."""
    return [v / b for v, b in zip(values, base, strict=True)]


def spread(values: Sequence[float], fmt: Callable[[float], str]) -> str:
    """'median [min-max]' (just the value for one sample)."""
    if len(values) == 1:
        return fmt(values[0])
    return f"{fmt(statistics.median(values))} [{fmt(min(values))}–{fmt(max(values))}]"


def secs(v: float) -> str:
    return f"{v:.2f} s"


def ms(v: float) -> str:
    return f"{v * 1000:.0f} ms"


def ratio(v: float) -> str:
    return f"{v:.3f}x"


def mib(v: float) -> str:
    return f"{v:.1f} MiB"


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


# --- reporting ----------------------------------------------------------------------------------------


def _version(dist: str) -> str:
    """A distribution's version from its metadata: reading it never imports the package (torch!)."""
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src"], cwd=REPO,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return f"{sha}{' + uncommitted changes in src/' if dirty else ''}" if sha else "unknown"


@dataclass(frozen=True)
class Machine:
    """Where and with what a table was measured; every table starts with it."""

    cpu: str
    cpus: int
    cpus_usable: int
    system: str
    python: str
    pytest: str
    torch: str
    pytest_heavy: str
    date: str

    @classmethod
    def detect(cls) -> Machine:
        try:
            usable = len(os.sched_getaffinity(0))
        except AttributeError:
            usable = os.cpu_count() or 1
        return cls(
            cpu=_cpu_model(), cpus=os.cpu_count() or 1, cpus_usable=usable,
            system=f"{platform.system()} {platform.release()}",
            python=platform.python_version(), pytest=_version("pytest"), torch=_version("torch"),
            pytest_heavy=f"{_version('pytest-heavy')} ({_commit()})",
            date=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        )

    def markdown(self, reps: int | str, load_before: float, load_after: float) -> str:
        return (
            f"- Machine: {self.cpu}, {self.cpus} CPUs ({self.cpus_usable} usable), {self.system}\n"
            f"- Python {self.python}, pytest {self.pytest}, torch {self.torch}, "
            f"pytest-heavy {self.pytest_heavy}\n"
            f"- Date: {self.date}; 1-minute load average {load_before:.2f} before, {load_after:.2f} after\n"
            f"- Repetitions: {reps}, interleaved (every variant once per repetition, order rotated), "
            "after an unrecorded warm-up run\n"
        )


NOISE_NOTE = (
    "Absolute times are noisy: this machine's cores are shared with other jobs that run at the same "
    "time. Compare variants through the ratios and differences, which are taken within each "
    "repetition (same load) and then summarized as median [min–max] over the repetitions."
)


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Verdict:
    """One target of the issue, what was measured for it, and whether it is met (None: no target)."""

    target: str
    measured: str
    met: bool | None


@dataclass
class Figure:
    """A figure's page (markdown body, without the machine block) and its verdicts."""

    name: str  # file stem under docs/benchmarks/
    title: str
    body: str
    verdicts: list[Verdict]
    reps: int | str  # "10 (collect-only), 5 (full run)" where parts differ


def load_average() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")
