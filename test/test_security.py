"""Issue #22's findings, each reproduced: what another user controls is never adopted, signalled or
written through, bad numbers are usage errors, and nothing secret or foreign leaks into children,
daemons or reports.

A second user is needed for most of them: as root, a helper process runs as uid 65534 (``nobody``)
and files are handed to it with ``chown``. Elsewhere those tests skip, saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from pytest_heavy.gpu import mps

FAKES = Path(__file__).resolve().parent / "fakes"
NOBODY = 65534
as_root = pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                             reason="a second user's files and processes need root (chown, setuid)")


# --- MPS: another user's directory or daemon --------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """PATH starts with the fake control binary; TMPDIR is short (the socket path) and private."""
    tmpdir = Path(tempfile.mkdtemp(prefix="mps-"))
    (tmp_path / "bin").mkdir()
    binary = tmp_path / "bin" / mps.CONTROL_BINARY
    binary.write_text(f"#!{sys.executable}\n" + (FAKES / "nvidia-cuda-mps-control.py").read_text())
    binary.chmod(0o755)
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("CUDA_MPS_", "FAKE_MPS_", "PYTEST_HEAVY_", "LOGNAME", "USER"))}
    environ.update(PATH=os.pathsep.join([str(tmp_path / "bin"), str(Path(sys.executable).parent),
                                         environ.get("PATH", "")]), TMPDIR=str(tmpdir))
    yield environ
    for pid_file in tmpdir.rglob(mps.PID_FILE):
        try:
            psutil.Process(int(pid_file.read_text())).kill()
        except (ValueError, OSError, psutil.Error):
            pass
    shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.fixture
def foreign_daemon() -> Iterator[psutil.Process]:
    """A live process named like the control daemon, running as nobody."""
    folder = Path(tempfile.mkdtemp(prefix="mps-foreign-"))
    folder.chmod(0o755)
    stand_in = folder / mps.CONTROL_BINARY
    shutil.copy("/bin/sleep", stand_in)
    proc = subprocess.Popen([str(stand_in), "120"], user=NOBODY, group=NOBODY)
    yield psutil.Process(proc.pid)
    proc.kill()
    proc.wait()
    shutil.rmtree(folder)


def user_pipe(environ: dict[str, str]) -> Path:
    """The per-user pipe directory this user's name selects (the real uid's name)."""
    return mps.tool_dirs(environ).pipe


def cli(environ: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_heavy.cli", "mps", *args], env=environ,
                          capture_output=True, text=True, timeout=60)


def plant(pipe: Path, daemon_pid: int, owner: int | None) -> None:
    """A pipe directory naming ``daemon_pid`` in its pid file, handed to ``owner``."""
    pipe.mkdir(mode=0o755)
    (pipe / mps.PID_FILE).write_text(f"{daemon_pid}\n")
    if owner is not None:
        os.chown(pipe / mps.PID_FILE, owner, owner)
        os.chown(pipe, owner, owner)


@as_root
def test_a_session_ignores_another_users_directory_and_daemon_and_says_so(env, foreign_daemon, tmp_path):
    pipe = user_pipe(env)
    plant(pipe, foreign_daemon.pid, NOBODY)
    (tmp_path / "proj").mkdir()
    (tmp_path / "proj" / "test_mps_env.py").write_text(
        "import os\n"
        "def test_env(): assert 'CUDA_MPS_PIPE_DIRECTORY' not in os.environ\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:randomly",
                             "--heavy-assume", "gpus=1x80GiB,ram=16GiB"], cwd=tmp_path / "proj", env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"heavy: MPS: ignored {pipe}: {pipe} belongs to uid {NOBODY} (nobody), not to you" in result.stdout
    assert "MPS off" in result.stdout
    status = mps.status(env)
    assert status["detail"].startswith("ignored") and "belongs to uid 65534" in status["detail"]


@as_root
def test_a_daemon_of_another_user_in_my_directory_is_not_adopted(env, foreign_daemon):
    pipe = user_pipe(env)
    plant(pipe, foreign_daemon.pid, None)
    session_env: dict[str, str] = dict(env)
    note = mps.adopt(session_env)
    assert "CUDA_MPS_PIPE_DIRECTORY" not in session_env
    assert note == (f"MPS: ignored {pipe}: its control daemon pid {foreign_daemon.pid} is owned by user "
                    "nobody, not by you")
    status = mps.status(env)
    assert status["running"] and status["owner"] == "nobody" and status["detail"].startswith("ignored")


@as_root
def test_stop_force_refuses_another_users_daemon(env, foreign_daemon):
    plant(user_pipe(env), foreign_daemon.pid, None)
    result = cli(env, "stop", "--force")
    assert result.returncode == mps.EXIT_FOREIGN, result.stderr
    assert f"owned by user nobody (pid {foreign_daemon.pid})" in result.stderr
    assert foreign_daemon.is_running()


def test_a_symlink_at_the_pipe_directory_is_refused_not_followed(env, tmp_path):
    target = tmp_path / "chosen-by-someone-else"
    target.mkdir()
    user_pipe(env).symlink_to(target)
    result = cli(env, "start")
    assert result.returncode == mps.EXIT_PERMISSION
    assert f"{user_pipe(env)} is a symbolic link" in result.stderr
    assert list(target.iterdir()) == []  # no daemon, no pid or state file written there


def test_a_pipe_directory_others_may_write_is_refused(env):
    pipe = user_pipe(env)
    pipe.mkdir()
    pipe.chmod(0o777)
    result = cli(env, "start")
    assert result.returncode == mps.EXIT_PERMISSION
    assert f"{pipe} is writable by others (mode 0777)" in result.stderr
    assert list(pipe.iterdir()) == []


@as_root
def test_the_user_name_comes_from_the_real_uid_not_the_environment(env):
    base = Path(env["TMPDIR"])
    assert mps.tool_dirs({**env, "USER": "nobody"}).pipe == base / "nvidia-mps-root"  # sudo -E
    assert mps.tool_dirs({**env, "LOGNAME": "../../etc"}).pipe == base / "nvidia-mps-root"


def test_the_daemon_does_not_inherit_secrets(env):
    env.update(HF_TOKEN="hf_secret", AWS_SECRET_ACCESS_KEY="aws_secret", CUDA_VISIBLE_DEVICES="0")
    dirs, _ = mps.start(env)
    pid = int((dirs.pipe / mps.PID_FILE).read_text())
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    mps.stop(env)
    assert b"CUDA_VISIBLE_DEVICES=0" in environ and f"CUDA_MPS_PIPE_DIRECTORY={dirs.pipe}".encode() in environ
    assert not [v for v in environ if v.startswith((b"HF_TOKEN=", b"AWS_SECRET_ACCESS_KEY="))]
