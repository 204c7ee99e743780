"""NVIDIA MPS detection: is a control daemon serving a pipe directory, and may this user trust it.

Read by the hardware probe at every session start, so it only reads the file system and the process
table: it never talks to the daemon (cheap and safe), and it imports psutil only when a pipe
directory exists. Control (start, stop, status, adopting the per-user daemon) is ``gpu/mps.py``.

Pipe directories live in world-writable places (``/tmp``): anyone can create one under a name we
would choose, plant a pid file naming their own process, or leave a symbolic link there. So a
directory counts only when ``lstat`` shows a real directory owned by an expected uid and not
writable by group or others, and a daemon only when its real uid is expected too (``distrust``).
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Collection
from pathlib import Path
from typing import Any

DEFAULT_PIPE_DIR = "/tmp/nvidia-mps"  # the driver's default, where CUDA clients look without the variable
CONTROL_BINARY = "nvidia-cuda-mps-control"
PID_FILE = "nvidia-cuda-mps-control.pid"  # written by the daemon, removed when it quits


def pipe_dir(env: dict[str, str] | None = None) -> Path:
    """The pipe directory CUDA clients use: CUDA_MPS_PIPE_DIRECTORY or the driver's default."""
    return Path((env if env is not None else os.environ).get("CUDA_MPS_PIPE_DIRECTORY") or DEFAULT_PIPE_DIR)


def user_name(uid: int) -> str:
    """The passwd name of ``uid``, or ``uid N`` where there is none (some containers)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def directory_problem(path: Path, owners: Collection[int]) -> str | None:
    """Why ``path`` may not be used as an MPS directory (None: it may, or it does not exist).

    ``lstat``, not ``stat``: a symbolic link is refused whatever it points at, since whoever planted
    it chooses where the daemon writes.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"{path} cannot be inspected ({exc.strerror})"
    if stat.S_ISLNK(st.st_mode):
        return f"{path} is a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return f"{path} is not a directory"
    if st.st_uid not in owners:
        return f"{path} belongs to uid {st.st_uid} ({user_name(st.st_uid)}), not to you"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def distrust(pipes: Path, proc: Any, owners: Collection[int]) -> str | None:
    """Why the daemon ``proc`` serving ``pipes`` must be left alone (None: its directory and its process
    belong to one of ``owners``)."""
    problem = directory_problem(pipes, owners)
    if problem is not None:
        return problem
    uid = proc.uids().real
    if uid not in owners:
        return f"its control daemon pid {proc.pid} is owned by user {user_name(uid)}, not by you"
    return None


def probe_owners() -> frozenset[int]:
    """Whose daemon the probe counts: this user's, or root's (an administrator's system-wide daemon,
    which CUDA clients use whatever the probe says; counting it only spares a needless routing)."""
    return frozenset({os.getuid(), 0})


def daemon_pid(env: dict[str, str] | None = None) -> tuple[int | None, str]:
    """(pid of a live control daemon serving our pipe directory, or None; a detail line)."""
    pipes = pipe_dir(env)
    proc = find_daemon(pipes)
    if proc is not None:
        why = distrust(pipes, proc, probe_owners())
        if why is not None:
            return None, f"ignored the MPS control daemon pid {proc.pid} ({pipes}): {why}"
        return proc.pid, f"MPS control daemon pid {proc.pid} ({pipes})"
    if (pipes / "control").exists():
        return None, f"stale MPS pipe directory {pipes}: no live {CONTROL_BINARY}"
    return None, f"no MPS control pipe in {pipes}"


def _is_control_daemon(proc: Any) -> bool:
    """Whether a psutil process is the control binary (by name, or by path for interpreted stand-ins).

    The kernel keeps 15 characters of a process name; psutil restores the full name from argv[0],
    which for a script run through its interpreter names the interpreter, so argv[1] is checked too.
    """
    import psutil

    try:
        if proc.name() == CONTROL_BINARY:
            return True
        return any(Path(arg).name == CONTROL_BINARY for arg in proc.cmdline()[:2])
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def find_daemon(pipes: Path) -> Any | None:
    """The live control daemon serving ``pipes`` (a psutil.Process), found through its pid file.

    When there is no pid file, a control binary process whose environment names ``pipes`` counts
    too (processes of other users hide their environment and are then not matched).
    """
    try:
        pid = int((pipes / PID_FILE).read_text().strip())
    except (OSError, ValueError):
        pid = None
    if pid is None and not (pipes / "control").exists():
        return None  # no daemon: every session start on a machine without MPS ends here, psutil unloaded
    import psutil

    if pid is not None:
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return None
        return proc if _is_control_daemon(proc) and proc.status() != psutil.STATUS_ZOMBIE else None
    for proc in psutil.process_iter(["name"]):
        if not _is_control_daemon(proc):
            continue
        try:
            served = proc.environ().get("CUDA_MPS_PIPE_DIRECTORY") or DEFAULT_PIPE_DIR
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if Path(served).resolve() == pipes.resolve():
            return proc
    return None


