"""NVIDIA MPS: control of a per-user daemon (finding one, which the hardware probe does, is mps_detect.py).

The control commands wrap ``nvidia-cuda-mps-control``, whose protocol is small: ``-d`` starts a
daemon in the background that serves ``$CUDA_MPS_PIPE_DIRECTORY/control`` and writes
``nvidia-cuda-mps-control.pid`` (``PID_FILE``) there; any other run reads commands from stdin
(``get_server_list``, ``quit``) and prints the daemon's answers, or "Cannot find MPS control daemon
process" with exit status 1 when none serves the directory.

Every call to the binary has a timeout, and stop only stops a daemon this tool started (recorded in
a state file beside the pid file) unless forced: a daemon someone else started may serve other jobs.
Nothing here adopts, talks to, stops or writes into what another user controls: their directory, a
symbolic link, a directory others may write, or a daemon running as them (``mps_detect.distrust``),
even with ``--force``. The daemon starts with a minimal environment (``daemon_environment``): it
outlives the shell that started it, and has no use for the tokens that shell holds.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..mps_detect import (
    CONTROL_BINARY,
    DEFAULT_PIPE_DIR,
    directory_problem,
    distrust,
    find_daemon,
    pipe_dir,
    user_name,
)
from ..mps_detect import PID_FILE as PID_FILE  # re-exported: what a caller of the control needs to know

STATE_FILE = "pytest-heavy-mps.json"  # ours: which daemon this tool started
NOT_RUNNING = "Cannot find MPS control daemon process"
# The control socket lives at PIPE/control; AF_UNIX paths longer than this make the daemon fail to bind
# and report only NOT_RUNNING, so start checks it first.
SOCKET_PATH_LIMIT = 107

# Exit statuses of ``pytest-heavy mps``, carried by MpsError; argparse's usage errors are 2.
EXIT_FAILED = 1
EXIT_MISSING = 3
EXIT_PERMISSION = 4
EXIT_FOREIGN = 5
EXIT_REFUSED = 6


class MpsError(Exception):
    """A failure the user can act on; ``code`` is the command's exit status."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Dirs:
    """Where this tool's daemon lives: the standard variables when set, else per-user directories."""

    pipe: Path
    log: Path

    def exports(self) -> list[str]:
        """Shell lines for ``eval``: what CUDA clients (and the daemon) need to find each other."""
        return [f"export CUDA_MPS_PIPE_DIRECTORY={shlex.quote(str(self.pipe))}",
                f"export CUDA_MPS_LOG_DIRECTORY={shlex.quote(str(self.log))}"]


def _user(env: dict[str, str]) -> str:
    """The name in the per-user directories: the real uid's, not the one the environment claims.

    ``sudo -E`` keeps the caller's USER, which would choose another user's directory, and a name
    holding ``/`` or ``..`` would leave TMPDIR. A name from the environment is kept only when it is a
    plain file name that is not another account's (a wrapper's or a test's label for this user).
    """
    uid = os.getuid()
    own = user_name(uid).replace(" ", "")  # "uid1000" without a passwd entry
    claimed = next((env[k] for k in ("LOGNAME", "USER", "LNAME", "USERNAME") if env.get(k)), own)
    if "/" in claimed or claimed in (".", ".."):
        return own
    try:
        account = pwd.getpwnam(claimed).pw_uid
    except KeyError:
        return claimed  # no such account: nobody else's directory
    return claimed if account == uid else own


def tool_dirs(env: dict[str, str] | None = None) -> Dirs:
    """Per-user defaults under $TMPDIR, so two users (or two jobs with their own TMPDIR) never share."""
    env = env if env is not None else dict(os.environ)
    base = Path(env.get("TMPDIR") or "/tmp")
    user = _user(env)
    pipe = Path(env.get("CUDA_MPS_PIPE_DIRECTORY") or base / f"nvidia-mps-{user}")
    log = Path(env.get("CUDA_MPS_LOG_DIRECTORY") or base / f"nvidia-mps-{user}-log")
    return Dirs(pipe=pipe.absolute(), log=log.absolute())


def adopt(env: MutableMapping[str, str]) -> str | None:
    """Point CUDA clients at this user's daemon (``pytest-heavy mps start``) when nothing else is chosen;
    returns a line for the session's header when a daemon there was ignored, not adopted.

    Without CUDA_MPS_PIPE_DIRECTORY, CUDA looks in the driver's default directory; a daemon started by
    ``pytest-heavy mps start`` in another shell lives in the per-user one. When only the latter is alive, its
    directories are set in ``env`` (the pytest parent's environment, copied to every child), so a run
    after ``pytest-heavy mps start`` uses MPS without the ``eval`` of its exports. Only a daemon of this
    user's, in a directory of this user's, is adopted: anyone can create the per-user name in /tmp.
    """
    if "CUDA_MPS_PIPE_DIRECTORY" in env or find_daemon(Path(DEFAULT_PIPE_DIR)) is not None:
        return None
    dirs = tool_dirs(dict(env))
    problem = directory_problem(dirs.pipe, (os.getuid(),))
    proc = find_daemon(dirs.pipe) if problem is None else None
    if proc is not None:
        problem = distrust(dirs.pipe, proc, (os.getuid(),))
    if problem is not None:
        return f"MPS: ignored {dirs.pipe}: {problem}"
    if proc is None:
        return None
    env["CUDA_MPS_PIPE_DIRECTORY"] = str(dirs.pipe)
    env.setdefault("CUDA_MPS_LOG_DIRECTORY", str(dirs.log))
    return None


def find_binary(env: dict[str, str]) -> str:
    """The control binary on PATH; a present but unusable one is a permission error, not 'missing'."""
    found = shutil.which(CONTROL_BINARY, path=env.get("PATH"))
    if found:
        return found
    for folder in (env.get("PATH") or "").split(os.pathsep):
        candidate = Path(folder or ".") / CONTROL_BINARY
        if candidate.is_file():
            raise MpsError(f"{candidate} exists but you may not execute it (permission denied); "
                           "ask the administrators for access to MPS", EXIT_PERMISSION)
    raise MpsError(f"{CONTROL_BINARY} not found on PATH: it ships with the NVIDIA driver's compute "
                   "utilities (e.g. the nvidia-compute-utils package); on a cluster, load the CUDA module "
                   "or ask the administrators", EXIT_MISSING)


def _daemon_env(env: dict[str, str], dirs: Dirs) -> dict[str, str]:
    """What a control command runs with: the caller's environment, pointed at ``dirs``."""
    return {**env, "CUDA_MPS_PIPE_DIRECTORY": str(dirs.pipe), "CUDA_MPS_LOG_DIRECTORY": str(dirs.log)}


DAEMON_NAMES = frozenset({"PATH", "HOME", "LANG", "TZ", "TMPDIR", "LD_LIBRARY_PATH"})
DAEMON_PREFIXES = ("CUDA_", "NVIDIA_", "LC_")


def daemon_environment(env: dict[str, str], dirs: Dirs) -> dict[str, str]:
    """The daemon's environment: where to find its libraries and the settings it reads (CUDA_*,
    NVIDIA_*, and any variable naming MPS), nothing else. It runs for days after the shell that
    started it, readable in /proc/PID/environ: tokens (HF_TOKEN, cloud keys) stay behind."""
    kept = {k: v for k, v in env.items()
            if k in DAEMON_NAMES or k.startswith(DAEMON_PREFIXES) or "MPS" in k}
    return _daemon_env(kept, dirs)


def control(binary: str, command: str, env: dict[str, str], timeout: float = 5.0) -> tuple[bool, str]:
    """Send one command to the daemon: (it answered, its output)."""
    try:
        done = subprocess.run([binary], input=command + "\n", capture_output=True, text=True, env=env,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"no answer to {command!r} within {timeout:g} s"
    except PermissionError as exc:
        raise MpsError(f"cannot run {binary}: {exc}", EXIT_PERMISSION) from None
    output = (done.stdout + done.stderr).strip()
    return done.returncode == 0 and NOT_RUNNING not in output, output


def _owner(proc: Any) -> tuple[int, str]:
    """(uid, user name) of a process; a uid without a passwd entry is shown as a number."""
    uid = proc.uids().real
    try:
        return uid, proc.username()
    except KeyError:
        return uid, str(uid)


def _read_state(dirs: Dirs) -> dict[str, Any]:
    try:
        data = json.loads((dirs.pipe / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _started_by_us(dirs: Dirs, proc: Any) -> bool:
    """Whether the state file names this very process (pid and start time: pids are reused)."""
    state = _read_state(dirs)
    return state.get("pid") == proc.pid and abs(float(state.get("create_time", -1)) - proc.create_time()) < 1


def _foreign(proc: Any, dirs: Dirs) -> MpsError | None:
    """The refusal for a daemon that is not this user's, or in a directory that is not theirs."""
    uid, name = _owner(proc)
    if uid == os.getuid():
        problem = directory_problem(dirs.pipe, (os.getuid(),))
        return None if problem is None else MpsError(
            f"the MPS control daemon pid {proc.pid} serves {dirs.pipe}, which pytest-heavy does not "
            f"use: {problem}", EXIT_FOREIGN)
    return MpsError(
        f"an MPS control daemon owned by user {name} (pid {proc.pid}) already serves {dirs.pipe}; "
        "its server runs for one user at a time, so your CUDA programs would wait for theirs. Ask them to "
        "stop it, or use a directory of your own (unset CUDA_MPS_PIPE_DIRECTORY for the per-user default)",
        EXIT_FOREIGN)


def _gone(proc: Any) -> bool:
    """Exited, or a zombie nobody reaped yet (the daemon's parent is init, which may be slow or absent)."""
    import psutil

    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _prepare_dir(path: Path) -> None:
    """Create ``path`` (mode 0700: the daemon is per user) or explain why it cannot be used: not a real
    directory of this user's that only they may write (checked with ``lstat``: never through a link)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except FileExistsError:
        pass  # a file or a dangling link: explained below
    except OSError as exc:
        raise MpsError(f"cannot create {path}: {exc.strerror} (set CUDA_MPS_PIPE_DIRECTORY and "
                       "CUDA_MPS_LOG_DIRECTORY to directories you own)", EXIT_PERMISSION) from None
    problem = directory_problem(path, (os.getuid(),))
    if problem is not None:
        raise MpsError(f"{problem}: choose another directory with "
                       "CUDA_MPS_PIPE_DIRECTORY / CUDA_MPS_LOG_DIRECTORY", EXIT_PERMISSION)
    if not os.access(path, os.W_OK | os.X_OK):
        raise MpsError(f"{path} is not writable by you (permission denied)", EXIT_PERMISSION)


def start(env: dict[str, str] | None = None, timeout: float = 10.0) -> tuple[Dirs, str]:
    """Start a daemon for this user (or find the one already running): (its directories, what happened).

    Waits, bounded by ``timeout``, until the daemon answers ``get_server_list``, so the CUDA programs
    started next connect to it instead of silently running without MPS.
    """
    env = dict(os.environ if env is None else env)
    dirs = tool_dirs(env)
    binary = find_binary(env)
    if (problem := directory_problem(dirs.pipe, (os.getuid(),))) is not None:
        raise MpsError(f"{problem}: choose another directory with CUDA_MPS_PIPE_DIRECTORY", EXIT_PERMISSION)
    if len(os.fsencode(dirs.pipe / "control")) > SOCKET_PATH_LIMIT:
        raise MpsError(f"pipe directory {dirs.pipe} is too long for the control socket (at most "
                       f"{SOCKET_PATH_LIMIT} bytes with '/control'): set TMPDIR or CUDA_MPS_PIPE_DIRECTORY "
                       "to a shorter path")
    running = find_daemon(dirs.pipe)
    if running is not None:
        foreign = _foreign(running, dirs)
        if foreign is not None:
            raise foreign
        whose = "started by pytest-heavy" if _started_by_us(dirs, running) else "not started by pytest-heavy"
        return dirs, f"MPS control daemon already running (pid {running.pid}, {whose}) for {dirs.pipe}"
    for path in (dirs.pipe, dirs.log):
        _prepare_dir(path)
    daemon_env = daemon_environment(env, dirs)
    # The daemon may keep the launcher's stdout open: a file, unlike a pipe, never blocks the launch.
    with tempfile.TemporaryFile(mode="w+") as out:
        try:
            launched = subprocess.run([binary, "-d"], stdin=subprocess.DEVNULL, stdout=out,
                                      stderr=subprocess.STDOUT, env=daemon_env, timeout=timeout,
                                      start_new_session=True)
        except subprocess.TimeoutExpired:
            raise MpsError(f"{binary} -d did not return within {timeout:g} s") from None
        except PermissionError as exc:
            raise MpsError(f"cannot run {binary}: {exc}", EXIT_PERMISSION) from None
        out.seek(0)
        said = out.read().strip()
    if launched.returncode != 0 and "already running" not in said:
        code = EXIT_PERMISSION if "permission" in said.lower() else EXIT_FAILED
        raise MpsError(f"{binary} -d failed (exit {launched.returncode}): {said or 'no output'}; "
                       f"see {dirs.log / 'control.log'}", code)
    deadline = time.monotonic() + timeout
    answered, output = False, ""
    while not answered and time.monotonic() < deadline:
        answered, output = control(binary, "get_server_list", _daemon_env(env, dirs),
                                   timeout=max(0.1, min(2.0, deadline - time.monotonic())))
        if not answered:
            time.sleep(0.05)
    proc = find_daemon(dirs.pipe)
    if not answered or proc is None:
        raise MpsError(f"the MPS control daemon did not answer within {timeout:g} s "
                       f"({output or 'no output'}); see {dirs.log / 'control.log'}")
    state = {"pid": proc.pid, "create_time": proc.create_time(), "uid": os.getuid(),
             "pipe_directory": str(dirs.pipe), "log_directory": str(dirs.log), "started_at": time.time()}
    _write_state(dirs, state)
    return dirs, f"MPS control daemon started (pid {proc.pid}) for {dirs.pipe}"


def _write_state(dirs: Dirs, state: dict[str, Any]) -> None:
    """Written beside the pid file in a directory only we may write, never through a link planted at
    its name (``O_NOFOLLOW``)."""
    path = dirs.pipe / STATE_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(json.dumps(state, indent=2) + "\n")


def stop(env: dict[str, str] | None = None, force: bool = False, timeout: float = 10.0) -> str:
    """Stop the daemon this tool started (any daemon of this user's serving the directory with ``force``;
    never another user's, nor one in a directory that is not this user's).

    Nothing running is success: stop is idempotent, so cleanup code may call it unconditionally.
    """
    env = dict(os.environ if env is None else env)
    dirs = tool_dirs(env)
    proc = find_daemon(dirs.pipe)
    if proc is None:
        if directory_problem(dirs.pipe, (os.getuid(),)) is None:
            (dirs.pipe / STATE_FILE).unlink(missing_ok=True)
        return f"no MPS control daemon serves {dirs.pipe}: nothing to stop"
    foreign = _foreign(proc, dirs)
    if foreign is not None:
        raise foreign
    if not force and not _started_by_us(dirs, proc):
        raise MpsError(f"the MPS control daemon pid {proc.pid} serving {dirs.pipe} was not started by "
                       "pytest-heavy, so other jobs may rely on it; stop it anyway with "
                       "`pytest-heavy mps stop --force`", EXIT_REFUSED)
    binary = find_binary(env)
    answered, output = control(binary, "quit", _daemon_env(env, dirs), timeout=timeout)
    if not answered:
        code = EXIT_PERMISSION if "permission" in output.lower() else EXIT_FAILED
        raise MpsError(f"the MPS control daemon pid {proc.pid} did not accept 'quit': "
                       f"{output or 'no output'}", code)
    deadline = time.monotonic() + timeout
    while not _gone(proc) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _gone(proc):
        raise MpsError(f"the MPS control daemon pid {proc.pid} accepted 'quit' but is still running after "
                       f"{timeout:g} s (its servers may be waiting for clients); "
                       f"see {dirs.log / 'control.log'}")
    (dirs.pipe / STATE_FILE).unlink(missing_ok=True)
    return f"MPS control daemon pid {proc.pid} stopped ({dirs.pipe})"


def status(env: dict[str, str] | None = None) -> dict[str, Any]:
    """A JSON-ready picture: daemon pid and owner, servers, directories, and what clients here would use."""
    env = dict(os.environ if env is None else env)
    dirs = tool_dirs(env)
    try:
        binary: str | None = find_binary(env)
    except MpsError:
        binary = None
    proc = find_daemon(dirs.pipe)
    doc: dict[str, Any] = {
        "running": proc is not None, "pid": None, "owner": None, "started_by_pytest_heavy": False,
        "servers": [], "pipe_directory": str(dirs.pipe), "log_directory": str(dirs.log), "binary": binary,
        "clients_pipe_directory": str(pipe_dir(env)), "detail": "",
    }
    problem = directory_problem(dirs.pipe, (os.getuid(),))
    if proc is None:
        doc["detail"] = (f"no MPS control daemon serves {dirs.pipe}" if problem is None
                         else f"ignored, not used by pytest-heavy: {problem}")
        return doc
    doc.update(pid=proc.pid, owner=_owner(proc)[1], started_by_pytest_heavy=_started_by_us(dirs, proc))
    if (problem := distrust(dirs.pipe, proc, (os.getuid(),))) is not None:
        doc["detail"] = f"ignored, not used or stopped by pytest-heavy: {problem}"
        return doc
    if binary is None:
        doc["detail"] = f"{CONTROL_BINARY} not on PATH: servers unknown"
        return doc
    answered, output = control(binary, "get_server_list", _daemon_env(env, dirs))
    if answered:
        doc["servers"] = [int(word) for word in output.split() if word.isdigit()]
    doc["detail"] = "answers" if answered else f"does not answer: {output}"
    return doc
