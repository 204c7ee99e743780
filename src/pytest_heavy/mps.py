"""NVIDIA MPS: is a control daemon running for this process's pipe directory?

Detection only reads the file system and the process table (psutil): it never talks to the
daemon, so probing stays cheap and safe. Starting and stopping live in the CLI.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_PIPE_DIR = "/tmp/nvidia-mps"
CONTROL_BINARY = "nvidia-cuda-mps-control"


def pipe_dir(env: dict[str, str] | None = None) -> Path:
    """The pipe directory CUDA clients use: CUDA_MPS_PIPE_DIRECTORY or the driver's default."""
    return Path((env if env is not None else os.environ).get("CUDA_MPS_PIPE_DIRECTORY") or DEFAULT_PIPE_DIR)


def daemon_pid(env: dict[str, str] | None = None) -> tuple[int | None, str]:
    """(pid of a live control daemon serving our pipe directory, or None; a detail line)."""
    import psutil

    pipes = pipe_dir(env)
    if not (pipes / "control").exists():
        return None, f"no MPS control pipe in {pipes}"
    for proc in psutil.process_iter(["name", "pid"]):
        if proc.info["name"] == CONTROL_BINARY:
            return proc.info["pid"], f"MPS control daemon pid {proc.info['pid']} ({pipes})"
    return None, f"stale MPS pipe directory {pipes}: no {CONTROL_BINARY} process"
