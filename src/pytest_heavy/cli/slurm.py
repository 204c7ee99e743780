"""``pytest-heavy split N --slurm``: the N subsets as one Slurm array job, merged back into one run.

The selection is collected once here, at submit time, with ``PLAN_ENV`` set: that session publishes the
plan (``split/slurm.py``) every task keeps its share from, and the durations snapshot, so the tasks'
shares neither overlap nor miss a test whatever their nodes see or earlier tasks record. The plan also
says what each subset needs, which becomes that task's resources: the array is submitted held with the
largest time and memory any task needs, then each task is lowered to its own and given its GPUs
(``scontrol update`` on a pending task, which any user may do), then released. One job id, one
``scancel``.

Task states come from ``scontrol show job`` (it keeps finished jobs for ``MinJobAge``) and, once the
controller has forgotten the job, from ``sacct`` where accounting runs. A task that ended outside pytest
(cancelled, over its time, out of memory, its node lost) wrote no junit: its tests are reported as errors
in the merged junit, with its state and log tail, and the run fails.
"""

from __future__ import annotations

import math
import os
import re
import shlex
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

from ..split.durations import SNAPSHOT_ENV, share_snapshot
from ..split.slurm import PLAN_ENV, Plan, PlanError, read_plan
from .merge import MERGED_NAME, combine_coverage, coverage_base, merge_junit, wants_coverage, worst

# States in which the task's pytest ran to its end (its exit code is pytest's); every other final state
# means the task was ended from outside.
PYTEST_ENDED = ("COMPLETED", "FAILED")
FINAL = (*PYTEST_ENDED, "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
         "DEADLINE", "SPECIAL_EXIT")
OUTSIDE_STATUS = 2  # a task ended from outside counts as an interrupted session (pytest's 2)
# sbatch options that set what this module would otherwise compute per task.
USER_TIME = ("--time", "-t")
USER_MEM = ("--mem", "--mem-per-cpu", "--mem-per-gpu")
USER_GPUS = ("--gres", "--gpus", "--gpus-per-node", "--gpus-per-task", "-G")
# Margins over what was recorded: a subset's time doubles plus start-up (interpreter, collection,
# queueing slack); a module's peak RSS grows by half, plus the pytest parent's own.
TIME_FACTOR, TIME_STARTUP_S = 2.0, 120.0
MEM_FACTOR, MEM_PARENT_MIB = 1.5, 1024
POLL_S = 1.0
UNSEEN_POLLS = 30
NEVER_STARTS = ("BadConstraints",)  # pending reasons that no wait resolves
LOG_TAIL = 15


class SlurmError(Exception):
    """sbatch or scontrol refused, or is missing."""


@dataclass
class Task:
    index: int
    n: int
    junit: Path
    log: Path
    nodeids: list[str]
    gpus: int = 0
    mem_mib: int | None = None
    time_min: int | None = None
    state: str = "PENDING"
    returncode: int | None = None
    reason: str = ""  # Slurm's reason a pending task waits

    @property
    def label(self) -> str:
        return f"{self.index}/{self.n}"

    @property
    def done(self) -> bool:
        return self.state in FINAL

    @property
    def outside(self) -> bool:
        """Ended by Slurm (or lost), not by pytest; or pytest died before writing its junit."""
        return self.state not in PYTEST_ENDED or not self.junit.exists()

    def request(self) -> list[str]:
        opts = [f"--gres=gpu:{self.gpus}"] if self.gpus else []
        opts += [f"--mem={self.mem_mib}M"] if self.mem_mib else []
        return opts + ([f"--time={self.time_min}"] if self.time_min else [])


def _given(opts: list[str], names: tuple[str, ...]) -> bool:
    return any(o == n or o.startswith(n + "=") or (len(n) == 2 and o.startswith(n))
               for o in opts for n in names)


def plan_tasks(plan: Plan, junit_dir: Path, user_opts: list[str]) -> list[Task]:
    """One task per subset with the resources its units need, except those ``user_opts`` already set.

    Time only when durations were recorded (placeholders say nothing), memory only where an isolated
    module's peak was recorded, GPUs where a unit asks for them (the largest count: units run in turn).
    """
    tasks = []
    for i in range(1, plan.n + 1):
        units = plan.subset(i).values()
        task = Task(i, plan.n, junit_dir / f"junit-{i}-of-{plan.n}.xml", junit_dir / f"task-{i}.log",
                    sorted(nodeid for u in units for nodeid in u.nodeids))
        if not _given(user_opts, USER_GPUS):
            task.gpus = max((u.gpus for u in units), default=0)
        peaks = [u.rss_mib for u in units if u.rss_mib is not None]
        if peaks and not _given(user_opts, USER_MEM):
            task.mem_mib = math.ceil(max(peaks) * MEM_FACTOR + MEM_PARENT_MIB)
        if plan.recorded and units and not _given(user_opts, USER_TIME):
            seconds = sum(u.seconds for u in units) * TIME_FACTOR + TIME_STARTUP_S
            task.time_min = max(1, math.ceil(seconds / 60))
        tasks.append(task)
    return tasks


def job_script(tasks: list[Task], pytest_args: list[str], env: dict[str, str], coverage: str | None,
               mps: bool) -> str:
    """The array's batch script: task i runs ``python -m pytest --heavy-split i/N`` in the submit
    directory (sbatch's default working directory) with this interpreter, on the plan and durations
    snapshot taken at submit time (exported here, so a site's ``--export=NONE`` keeps them)."""
    py = shlex.quote(sys.executable)
    n = len(tasks)
    junit = shlex.quote(str(tasks[0].junit.parent))
    lines = ["#!/bin/bash", "# written by pytest-heavy split --slurm: array task i runs subset i/N",
             "i=$SLURM_ARRAY_TASK_ID", "export PYTHONUNBUFFERED=1",
             *(f"export {name}={shlex.quote(env[name])}" for name in (PLAN_ENV, SNAPSHOT_ENV))]
    if coverage:
        lines.append(f"export COVERAGE_FILE={shlex.quote(coverage)}.split-$i")
    gpu_tasks = " ".join(str(t.index) for t in tasks if t.gpus)
    if mps and gpu_tasks:
        # A task-scoped MPS daemon (EXCLUSIVE_PROCESS GPUs): its own pipe and log directories under the
        # node's TMPDIR, named after this task's job id, stopped when the task ends.
        lines += [
            f'case " {gpu_tasks} " in *" $i "*)',
            '  mps_dir="${TMPDIR:-/tmp}/heavy-mps-$SLURM_JOB_ID"',
            '  export CUDA_MPS_PIPE_DIRECTORY="$mps_dir/pipe" CUDA_MPS_LOG_DIRECTORY="$mps_dir/log"',
            f"  if exports=$({py} -m pytest_heavy.cli mps start); then",
            '    eval "$exports"',
            f"    trap '{py} -m pytest_heavy.cli mps stop >&2' EXIT",
            "  else",
            '    echo "pytest-heavy: MPS could not be started; GPU tests run one child at a time" >&2',
            "  fi;;",
            "esac",
        ]
    args = " ".join(shlex.quote(a) for a in pytest_args)
    lines += [f"{py} -m pytest --heavy-split=$i/{n} --junitxml={junit}/junit-$i-of-{n}.xml {args}",
              "exit $?", ""]
    return "\n".join(lines)


def _slurm(cmd: list[str], what: str) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise SlurmError(f"{cmd[0]} not found: is this a Slurm login node?") from None
    except subprocess.TimeoutExpired:
        raise SlurmError(f"{what}: {cmd[0]} did not answer in 60s") from None
    if done.returncode:
        raise SlurmError(f"{what}: {shlex.join(cmd)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def submit(tasks: list[Task], script: Path, user_opts: list[str]) -> str:
    """Submit the array held, give each task its resources, release it; the job id."""
    n = len(tasks)
    common = [f"--time={t}" for t in [max((t.time_min or 0) for t in tasks)] if t]
    common += [f"--mem={m}M" for m in [max((t.mem_mib or 0) for t in tasks)] if m]
    cmd = ["sbatch", "--parsable", "--hold", f"--array=1-{n}", "--job-name=pytest-heavy",
           f"--output={tasks[0].log.parent}/task-%a.log", *common, *user_opts, str(script)]
    job = _slurm(cmd, "submit").strip().split(";")[0]
    try:
        for task in tasks:
            fields = [f"TimeLimit={task.time_min}"] if task.time_min else []
            fields += [f"MinMemoryNode={task.mem_mib}"] if task.mem_mib else []
            fields += [f"TresPerNode=gres:gpu:{task.gpus}"] if task.gpus else []
            if fields:
                _slurm(["scontrol", "update", f"JobId={job}_{task.index}", *fields], f"task {task.label}")
        _slurm(["scontrol", "release", job], "release")
    except SlurmError as exc:
        # A GPU task released without its GPUs would pass by skipping its tests: run nothing instead,
        # and leave no held job behind.
        subprocess.run(["scancel", job], check=False, timeout=60)
        raise SlurmError(f"{exc}; job {job} cancelled") from None
    return job


def _expand(spec: str) -> list[int]:
    """``1-3,5`` or ``2-4%1`` (a pending array's task ids) as a list."""
    out: list[int] = []
    for part in spec.split("%")[0].split(","):
        lo, _, hi = part.partition("-")
        if lo.isdigit():
            out += range(int(lo), int(hi or lo) + 1) if (hi or lo).isdigit() else []
    return out


def _exit_status(code: str) -> int | None:
    """``ExitCode=rc:signal`` as a shell would report it (128+signal for a signal)."""
    rc, _, sig = code.partition(":")
    if not rc.isdigit():
        return None
    return 128 + int(sig) if sig.isdigit() and int(sig) else int(rc)


State = tuple[str, int | None, str]  # JobState, exit status, Reason


def read_states(job: str) -> dict[int, State]:
    """{task index: (state, exit status, reason)} from ``scontrol show job``, else from ``sacct``."""
    states: dict[int, State] = {}
    try:
        text = _slurm(["scontrol", "show", "job", "-o", job], "state")
    except SlurmError:
        text = ""
    for line in text.splitlines():
        rec = dict(re.findall(r"(\w+)=(\S*)", line))
        for index in _expand(rec.get("ArrayTaskId", "")):
            states[index] = (rec.get("JobState", "UNKNOWN"), _exit_status(rec.get("ExitCode", "")),
                             rec.get("Reason", ""))
    if states:
        return states
    try:  # the controller forgot the job (MinJobAge): accounting may still know it
        text = _slurm(["sacct", "-j", job, "-X", "-n", "-P", "-o", "JobID,State,ExitCode"], "state")
    except SlurmError:
        return states
    for row in text.splitlines():
        jobid, state, code = (row.split("|") + ["", "", ""])[:3]
        for i in _expand(jobid.partition("_")[2].strip("[]")):
            states[i] = (state.split(" ")[0], _exit_status(code), "")
    return states


def _ranges(indices: list[int]) -> str:
    out, start = [], None
    for k, i in enumerate(indices):
        start = i if start is None else start
        if k + 1 == len(indices) or indices[k + 1] != i + 1:
            out.append(str(start) if start == i else f"{start}-{i}")
            start = None
    return ",".join(out) or "-"


def progress(job: str, tasks: list[Task]) -> str:
    groups: dict[str, list[int]] = {"pending": [], "running": [], "done": []}
    for t in tasks:
        groups["done" if t.done else "pending" if t.state in ("PENDING", "REQUEUED") else "running"].append(
            t.index)
    return f"job {job}: " + "; ".join(f"{k} {len(v)} [{_ranges(v)}]" for k, v in groups.items())


@dataclass
class Waiter:
    job: str
    tasks: list[Task]
    tty: bool = field(default_factory=lambda: sys.stdout.isatty())
    last: str = ""
    unseen: int = 0  # polls in a row that found the job nowhere
    cancelled: bool = False

    def poll(self) -> bool:
        """Read the states once, show progress when it changed; True when every task is done."""
        states = read_states(self.job)
        for task in self.tasks:
            if task.index in states and not task.done:
                task.state, task.returncode, task.reason = states[task.index]
        line = progress(self.job, self.tasks)
        if line != self.last:
            if self.tty:
                sys.stdout.write(f"\r\x1b[K{line}")
            else:
                sys.stdout.write(f"{line}\n")
            sys.stdout.flush()
            self.last = line
        never = [t for t in self.tasks if t.state == "PENDING" and t.reason in NEVER_STARTS]
        if never and not self.cancelled:
            # Its request exceeds every node (more GPUs than any has, say): waiting would be forever.
            if self.tty:
                sys.stdout.write("\n")
            for task in never:
                print(f"task {task.label} can never start (Reason={task.reason}: "
                      f"{' '.join(task.request())} exceeds every node); scancel {self.job}")
            subprocess.run(["scancel", self.job], check=False, timeout=60)
            self.cancelled = True
        self.unseen = 0 if states else self.unseen + 1
        if self.unseen >= UNSEEN_POLLS:  # known nowhere for a while (not one failed query): lost
            for task in self.tasks:
                task.state = task.state if task.done else "UNKNOWN"
            return True
        return all(t.done for t in self.tasks)

    def wait(self, deadline: float | None = None) -> None:
        while not self.poll():
            if deadline is not None and time.monotonic() > deadline:
                return
            time.sleep(POLL_S)
        if self.tty:
            sys.stdout.write("\n")


def log_tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _case_name(nodeid: str) -> tuple[str, str]:
    """pytest's junit (classname, name) for a node id (``_pytest.junitxml.mangle_test_address``)."""
    path, bracket, params = nodeid.partition("[")
    names = path.split("::")
    names[0] = re.sub(r"\.py$", "", names[0].replace("/", "."))
    names[-1] += bracket + params
    return ".".join(names[:-1]), names[-1]


def outside_junit(task: Task, job: str) -> None:
    """The junit a task ended from outside never wrote: each of its tests as an error naming why."""
    tail = log_tail(task.log)
    message = f"Slurm task {job}_{task.index} ({task.label}) ended {task.state} before pytest finished"
    count = str(len(task.nodeids))
    suite = ET.Element("testsuite", name="pytest", tests=count, errors=count, failures="0", skipped="0",
                       time="0", hostname=f"slurm task {task.label}")
    for nodeid in task.nodeids:
        classname, name = _case_name(nodeid)
        case = ET.SubElement(suite, "testcase", classname=classname, name=name, time="0")
        ET.SubElement(case, "error", message=message).text = tail
    root = ET.Element("testsuites")
    root.append(suite)
    ET.ElementTree(root).write(task.junit, encoding="utf-8", xml_declaration=True)


def collect_plan(n: int, pytest_args: list[str], env: dict[str, str]) -> tuple[Plan | None, int, str]:
    """Collect once as subset 1/N would, so the plan and the durations snapshot are published now."""
    cmd = [sys.executable, "-m", "pytest", "--collect-only", "-q", f"--heavy-split=1/{n}", *pytest_args]
    if wants_coverage(pytest_args):
        cmd.append("--no-cov")
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode not in (0, 5):
        return None, done.returncode, done.stdout + done.stderr
    try:
        return read_plan(Path(env[PLAN_ENV])), 0, ""
    except PlanError as exc:
        return None, 3, str(exc)


def run_slurm(n: int, junit_dir: Path, pytest_args: list[str], user_opts: list[str], mps: bool) -> int:
    start = time.monotonic()
    junit_dir = junit_dir.resolve()
    junit_dir.mkdir(parents=True, exist_ok=True)
    for old in [*junit_dir.glob("junit-*-of-*.xml"), *junit_dir.glob("task-*.log"), junit_dir / "plan.json"]:
        old.unlink(missing_ok=True)  # never read an earlier run's report as this one's
    env = dict(os.environ)
    env.pop(SNAPSHOT_ENV, None)
    share_snapshot(env, junit_dir / "durations.json")
    env[PLAN_ENV] = str(junit_dir / "plan.json")
    plan, status, output = collect_plan(n, pytest_args, env)
    if plan is None:
        sys.stderr.write(output)
        print(f"pytest-heavy split {n} --slurm: collection failed (exit {status}); nothing submitted",
              file=sys.stderr)
        return status or 5
    tasks = plan_tasks(plan, junit_dir, user_opts)
    base = coverage_base() if wants_coverage(pytest_args) else None
    script = junit_dir / "job.sh"
    script.write_text(job_script(tasks, pytest_args, env, base, mps))
    try:
        job = submit(tasks, script, user_opts)
    except SlurmError as exc:
        print(f"pytest-heavy split {n} --slurm: {exc}", file=sys.stderr)
        return 3
    print(f"job {job}: {n} tasks, logs {junit_dir}/task-<i>.log", flush=True)
    for task in tasks:
        print(f"  task {task.label}: {len(task.nodeids)} tests; {' '.join(task.request()) or 'no request'}")
    waiter = Waiter(job, tasks)
    interrupted = False
    try:
        waiter.wait()
    except KeyboardInterrupt:
        interrupted = True
        print(f"\ninterrupted: scancel {job}", flush=True)
        subprocess.run(["scancel", job], check=False)
        waiter.wait(deadline=time.monotonic() + 60)
    return finish(job, tasks, junit_dir, base, interrupted, start)


def finish(job: str, tasks: list[Task], junit_dir: Path, base: str | None, interrupted: bool,
           start: float) -> int:
    """Name the tasks ended from outside, merge junit and coverage, print the summary; the exit status."""
    statuses = []
    for task in tasks:
        if task.outside:
            print(f"task {task.label} ({job}_{task.index}) {task.state}: its {len(task.nodeids)} tests are "
                  f"reported as errors; log {task.log} ends:")
            print("\n".join(f"    {line}" for line in log_tail(task.log).splitlines()))
            outside_junit(task, job)
            statuses.append(OUTSIDE_STATUS)
        elif task.returncode is not None:
            statuses.append(task.returncode)
    merged = junit_dir / MERGED_NAME
    totals = merge_junit([t.junit for t in tasks], merged)
    if base:
        print(combine_coverage(base, [f"{base}.split-{t.index}" for t in tasks]))
    status = OUTSIDE_STATUS if interrupted else worst(statuses)
    bad = [f"{t.label} {t.state}" + (f" exit {t.returncode}" if t.returncode else "")
           for t in tasks if t.outside or t.returncode]
    print(f"pytest-heavy split {len(tasks)} --slurm (job {job}): {totals.line()} in "
          f"{time.monotonic() - start:.2f}s; exit {status}{' (' + ', '.join(bad) + ')' if bad else ''}; "
          f"junit {merged}")
    return status
