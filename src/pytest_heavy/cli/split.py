"""``pytest-heavy split N``: run the N subsets of ``--heavy-split``, each in a pytest process of its own.

One process per subset is the remedy for the GPU "parent trap" where MPS is unavailable: on an
EXCLUSIVE_PROCESS GPU only one process may hold a CUDA context, and a context left in one long pytest
parent blocks every later child. Fresh processes also return the memory that no cleanup can.

The results are read back from each subset's junit file, not from its output, so the combined summary
does not depend on pytest's terminal format; the same merge serves CI matrices and Slurm arrays
(``--merge-junit``). ``--slurm`` submits the subsets as one array job instead (``cli/slurm.py``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..split.durations import share_snapshot
from .merge import MERGED_NAME, combine_coverage, coverage_base, merge_junit, wants_coverage, worst

DEFAULT_JUNIT_DIR = ".heavy/split"
@dataclass
class Subset:
    index: int
    n: int
    junit: Path
    coverage_file: str | None
    returncode: int | None = None

    @property
    def label(self) -> str:
        return f"{self.index}/{self.n}"


def _run_one(subset: Subset, pytest_args: list[str], env: dict[str, str], prefix: bool,
             out_lock: threading.Lock) -> int:
    # Ours come first: they win over ini addopts, and an explicit user option still wins over ours.
    cmd = [sys.executable, "-m", "pytest", f"--heavy-split={subset.label}", f"--junitxml={subset.junit}",
           *pytest_args]
    env = dict(env)
    if subset.coverage_file:
        env["COVERAGE_FILE"] = subset.coverage_file
    if not prefix:
        return subprocess.run(cmd, env=env).returncode  # the terminal is the subset's own: colours and all
    env["PYTHONUNBUFFERED"] = "1"  # lines as they happen, not in pipe-buffer blocks
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          errors="replace") as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            with out_lock:
                sys.stdout.write(f"[{subset.label}] {line}")
                sys.stdout.flush()
        return proc.wait()


def run_split(n: int, jobs: int, junit_dir: Path, pytest_args: list[str]) -> int:
    start = time.monotonic()
    junit_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    share_snapshot(env, junit_dir / "durations.json")
    base = coverage_base() if wants_coverage(pytest_args) else None
    subsets = [Subset(i, n, junit_dir / f"junit-{i}-of-{n}.xml", f"{base}.split-{i}" if base else None)
               for i in range(1, n + 1)]
    for subset in subsets:
        subset.junit.unlink(missing_ok=True)  # never read a stale report as this run's
    out_lock = threading.Lock()
    interrupted = False
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(_run_one, s, pytest_args, env, jobs > 1, out_lock) for s in subsets]
        try:
            for subset, future in zip(subsets, futures, strict=True):
                subset.returncode = future.result()
        except KeyboardInterrupt:
            # The terminal sent SIGINT to the subsets too; let them finish their reports, start no more.
            interrupted = True
            pool.shutdown(wait=True, cancel_futures=True)
            for subset, future in zip(subsets, futures, strict=True):
                if future.done() and not future.cancelled():
                    subset.returncode = future.result()
    statuses = [128 - s.returncode if s.returncode < 0 else s.returncode
                for s in subsets if s.returncode is not None]
    status = 2 if interrupted else worst(statuses)
    merged = junit_dir / MERGED_NAME
    totals = merge_junit([s.junit for s in subsets], merged)
    if base:
        print(combine_coverage(base, [s.coverage_file for s in subsets if s.coverage_file]))
    bad = [f"{s.label} exit {s.returncode}" for s in subsets if s.returncode not in (0, None)]
    notes = [f"no junit from {', '.join(p.name for p in totals.missing)}"] if totals.missing else []
    notes += ["interrupted"] if interrupted else []
    print(f"pytest-heavy split {n} (-j {jobs}): {totals.line()} in {time.monotonic() - start:.2f}s; "
          f"exit {status}{' (' + ', '.join(bad) + ')' if bad else ''}; junit {merged}"
          f"{'; ' + '; '.join(notes) if notes else ''}")
    return status


def split_command(args: argparse.Namespace) -> int:
    if args.merge_junit:
        if len(args.merge_junit) < 2 or args.n is not None or args.pytest_args:
            print("pytest-heavy split --merge-junit OUT IN...: takes an output file and at least one input, "
                  "nothing else", file=sys.stderr)
            return 2  # a usage error, as argparse's own
        out, *inputs = map(Path, args.merge_junit)
        totals = merge_junit(inputs, out)
        missing = f"; unreadable: {', '.join(map(str, totals.missing))}" if totals.missing else ""
        print(f"merged {totals.suites} suites into {out}: {totals.line()}{missing}")
        return 1 if totals.counts["failed"] or totals.counts["errors"] or totals.missing else 0
    if args.n is None:
        print("pytest-heavy split: N (the number of subsets) is required", file=sys.stderr)
        return 2
    if not args.slurm and (args.slurm_opt or args.slurm_mps):
        print("pytest-heavy split: --slurm-opt and --slurm-mps go with --slurm", file=sys.stderr)
        return 2
    if args.slurm:
        if args.jobs != 1:
            print("pytest-heavy split --slurm: -j does not apply (Slurm runs the tasks)", file=sys.stderr)
            return 2
        from .slurm import run_slurm

        return run_slurm(args.n, Path(args.junit_dir), args.pytest_args, args.slurm_opt, args.slurm_mps)
    return run_split(args.n, args.jobs, Path(args.junit_dir), args.pytest_args)


def count(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "split", allow_abbrev=False, help="run the N subsets of --heavy-split, one pytest process each",
        description="Run the N balanced subsets of the selection, each as `python -m pytest "
                    "--heavy-split i/N [pytest args]`; merge their junit (and coverage with --cov); exit "
                    "with the worst status. Options of split come first; everything else (or all after --) "
                    "goes to pytest.")
    p.add_argument("n", type=count, nargs="?", metavar="N", help="number of subsets")
    p.add_argument("-j", "--jobs", type=count, default=1, metavar="K",
                   help="subsets run at once (default 1); output lines are prefixed [i/N] when K > 1")
    p.add_argument("--junit-dir", default=DEFAULT_JUNIT_DIR, metavar="DIR",
                   help=f"junit-i-of-N.xml per subset and the merged {MERGED_NAME} "
                        f"(default {DEFAULT_JUNIT_DIR})")
    p.add_argument("--merge-junit", nargs="+", metavar="FILE",
                   help="OUT IN...: only merge junit files (CI matrix jobs, Slurm array tasks); "
                        "exit 1 when any test failed or errored")
    p.add_argument("--slurm", action="store_true",
                   help="submit the subsets as one Slurm array job (sbatch --array=1-N), wait, merge; "
                        "per-task --gres/--mem/--time from the recorded needs")
    p.add_argument("--slurm-opt", action="append", default=[], metavar="ARG",
                   help="an sbatch option for every task, e.g. --slurm-opt=--partition=gpu (repeatable; "
                        "one given here replaces what would be computed)")
    p.add_argument("--slurm-mps", action="store_true",
                   help="tasks holding GPU work start their own MPS daemon (EXCLUSIVE_PROCESS GPUs)")
    p.set_defaults(func=split_command, pytest_args=[])
