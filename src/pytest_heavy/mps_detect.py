"""NVIDIA MPS detection: is a control daemon serving a pipe directory, and whose is it.

Read by the hardware probe at every session start, so it only reads the file system and the process
table: it never talks to the daemon (cheap and safe), and it imports psutil only when a pipe
directory exists. Control (start, stop, status, adopting the per-user daemon) is ``gpu/mps.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

DEFAULT_PIPE_DIR = "/tmp/nvidia-mps"  # the driver's default, where CUDA clients look without the variable
CONTROL_BINARY = "nvidia-cuda-mps-control"
PID_FILE = "nvidia-cuda-mps-control.pid"  # written by the daemon, removed when it quits


def pipe_dir(env: dict[str, str] | None = None) -> Path:
    """The pipe directory CUDA clients use: CUDA_MPS_PIPE_DIRECTORY or the driver's default."""
    return Path((env if env is not None else os.environ).get("CUDA_MPS_PIPE_DIRECTORY") or DEFAULT_PIPE_DIR)


def daemon_pid(env: dict[str, str] | None = None) -> tuple[int | None, str]:
    """(pid of a live control daemon serving our pipe directory, or None; a detail line)."""
    pipes = pipe_dir(env)
    proc = find_daemon(pipes)
    if proc is not None:
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


