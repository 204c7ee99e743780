"""A stand-in for ``nvidia-cuda-mps-control``: the part of its protocol pytest-heavy uses, nothing more.

Tests copy it, with a ``#!`` line naming their interpreter, to ``nvidia-cuda-mps-control`` in a folder
put first on PATH. Like the real binary:

- ``-d`` daemonizes: the daemon writes ``$CUDA_MPS_PIPE_DIRECTORY/nvidia-cuda-mps-control.pid``, serves
  the ``control`` Unix socket beside it and appends to ``$CUDA_MPS_LOG_DIRECTORY/control.log``; a second
  ``-d`` while one runs fails with "An instance of this daemon is already running".
- without arguments it reads commands from stdin (``get_server_list``, ``quit``), sends each to the
  daemon and prints the answers; with no daemon it prints "Cannot find MPS control daemon process" and
  exits 1. ``quit`` removes the pid file and leaves the socket behind, as the real daemon does.

Knobs, read from the environment when the daemon starts: ``FAKE_MPS_SERVERS`` (pids that
``get_server_list`` answers, space separated), ``FAKE_MPS_DELAY`` (seconds before the daemon answers),
``FAKE_MPS_DENY=1`` (``-d`` fails with "Permission denied", as the real one does when it cannot write
its log directory).
"""

import os
import socket
import sys
import time

PIPE = os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or "/tmp/nvidia-mps"
LOG = os.environ.get("CUDA_MPS_LOG_DIRECTORY") or "/var/log/nvidia-mps"
PID_FILE = os.path.join(PIPE, "nvidia-cuda-mps-control.pid")
CONTROL = os.path.join(PIPE, "control")
NOT_RUNNING = "Cannot find MPS control daemon process"


def log(line):
    with open(os.path.join(LOG, "control.log"), "a") as f:
        f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')} Control {os.getpid()}] {line}\n")


def live_pid():
    try:
        with open(PID_FILE) as f:
            pid = int(f.read())
        os.kill(pid, 0)
    except PermissionError:  # alive, another user's
        return pid
    except (OSError, ValueError):
        return None
    return pid


def daemon():
    if os.environ.get("FAKE_MPS_DENY"):
        print(f"Failed to open {os.path.join(LOG, 'control.log')}: Permission denied", file=sys.stderr)
        return 1
    if live_pid():
        print("An instance of this daemon is already running", file=sys.stderr)
        return 1
    os.makedirs(PIPE, exist_ok=True)
    os.makedirs(LOG, exist_ok=True)
    if os.fork():
        return 0
    os.setsid()
    if os.fork():
        os._exit(0)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    with open(PID_FILE, "w") as f:
        f.write(f"{os.getpid()}\n")
    time.sleep(float(os.environ.get("FAKE_MPS_DELAY") or 0))
    if os.path.exists(CONTROL):
        os.unlink(CONTROL)
    server = socket.socket(socket.AF_UNIX)
    server.bind(CONTROL)
    server.listen()
    log(f"Starting control daemon using socket {CONTROL}")
    servers = (os.environ.get("FAKE_MPS_SERVERS") or "").split()
    while True:
        conn, _ = server.accept()
        with conn:
            command = conn.makefile().readline().strip()
            log(f"Accepting connection... command {command}")
            if command == "quit":
                os.unlink(PID_FILE)
                log("Exit")
                os._exit(0)
            answer = "\n".join(servers) if command == "get_server_list" else f"Unknown command {command}"
            conn.sendall((answer + "\n").encode() if answer else b"")


def client():
    commands = [line.strip() for line in sys.stdin if line.strip()]
    if live_pid() is None:
        print(NOT_RUNNING)
        return 1
    for command in commands:
        with socket.socket(socket.AF_UNIX) as conn:
            conn.settimeout(5)
            try:
                conn.connect(CONTROL)
            except OSError:
                print(NOT_RUNNING)
                return 1
            conn.sendall((command + "\n").encode())
            chunks = []
            while chunk := conn.recv(4096):
                chunks.append(chunk)
        sys.stdout.write(b"".join(chunks).decode())
    return 0


if __name__ == "__main__":
    sys.exit(daemon() if sys.argv[1:] == ["-d"] else client())
