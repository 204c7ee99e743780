"""``pytest-heavy mps start|stop|status`` and the scripts, against a fake ``nvidia-cuda-mps-control``.

The fake (test/fakes/nvidia-cuda-mps-control.py) is a real executable first on PATH that daemonizes,
writes the pid file and serves the control socket the way the real binary does, so every call here
goes through real processes: nothing in pytest-heavy is patched.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from pytest_heavy.gpu import mps

ROOT = Path(__file__).resolve().parent.parent
FAKE = Path(__file__).resolve().parent / "fakes" / "nvidia-cuda-mps-control.py"
SCRIPTS = ROOT / "scripts"


def install_fake(folder: Path, mode: int = 0o755) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    binary = folder / mps.CONTROL_BINARY
    binary.write_text(f"#!{sys.executable}\n" + FAKE.read_text())
    binary.chmod(mode)
    return binary


def fake_daemons(under: Path) -> list[psutil.Process]:
    """Live fake daemons whose pid files lie under ``under``."""
    found = []
    for pid_file in under.rglob(mps.PID_FILE):
        try:
            proc = psutil.Process(int(pid_file.read_text()))
            if proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except (ValueError, psutil.NoSuchProcess):
            pass
    return found


@pytest.fixture
def env(tmp_path: Path):
    """An environment whose PATH starts with the fake binary and whose TMPDIR is private to the test.

    Kept short (a fresh mkdtemp) so the control socket path stays under the AF_UNIX limit; every daemon
    left behind by a failing test is killed afterwards.
    """
    tmpdir = Path(tempfile.mkdtemp(prefix="mps-"))
    install_fake(tmp_path / "bin")
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("CUDA_MPS_", "FAKE_MPS_", "PYTEST_HEAVY_", "LOGNAME"))}
    environ.update(PATH=os.pathsep.join([str(tmp_path / "bin"), str(Path(sys.executable).parent),
                                         environ.get("PATH", "")]),
                   TMPDIR=str(tmpdir), USER="tester")
    yield environ
    for proc in fake_daemons(tmpdir):
        proc.kill()
    shutil.rmtree(tmpdir, ignore_errors=True)


def cli(environ: dict[str, str], *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pytest_heavy.cli", "mps", *args], env=environ, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_start_status_stop_cycle_is_idempotent(env):
    pipe = Path(env["TMPDIR"]) / "nvidia-mps-tester"
    env["FAKE_MPS_SERVERS"] = "4242 4343"
    before = mps.status(env)
    assert before["running"] is False and before["pipe_directory"] == str(pipe)

    started = cli(env, "start")
    assert started.returncode == 0, started.stderr
    assert started.stdout.splitlines() == [f"export CUDA_MPS_PIPE_DIRECTORY={pipe}",
                                           f"export CUDA_MPS_LOG_DIRECTORY={pipe}-log"]
    pid = int((pipe / mps.PID_FILE).read_text())
    assert f"MPS control daemon started (pid {pid})" in started.stderr
    assert (pipe / mps.STATE_FILE).exists() and (Path(f"{pipe}-log") / "control.log").exists()
    assert oct(pipe.stat().st_mode & 0o777) == "0o700"

    again = cli(env, "start")
    assert again.returncode == 0
    assert f"already running (pid {pid}, started by pytest-heavy)" in again.stderr
    assert again.stdout == started.stdout

    doc = json.loads(cli(env, "status", "--json").stdout)
    assert doc["running"] and doc["pid"] == pid and doc["started_by_pytest_heavy"]
    assert doc["servers"] == [4242, 4343] and doc["owner"] == psutil.Process().username()
    assert doc["log_directory"] == f"{pipe}-log" and doc["binary"].endswith(mps.CONTROL_BINARY)
    text = cli(env, "status").stdout
    assert f"running, pid {pid}" in text and "servers: 4242 4343" in text
    assert f"export CUDA_MPS_PIPE_DIRECTORY={pipe}" in text  # clients in that shell look elsewhere

    stopped = cli(env, "stop")
    assert stopped.returncode == 0 and f"pid {pid} stopped" in stopped.stderr
    assert not fake_daemons(pipe) and not (pipe / mps.STATE_FILE).exists()
    assert "nothing to stop" in mps.stop(env)
    assert mps.status(env)["running"] is False


def test_stop_refuses_a_daemon_it_did_not_start(env):
    pipe = Path(env["TMPDIR"]) / "shared-pipe"
    env.update(CUDA_MPS_PIPE_DIRECTORY=str(pipe), CUDA_MPS_LOG_DIRECTORY=str(pipe) + "-log")
    subprocess.run([mps.CONTROL_BINARY, "-d"], env=env, check=True, timeout=30)
    dirs, message = mps.start(env)  # waits for the daemon to answer, then keeps it
    assert dirs.pipe == pipe and "already running" in message and "not started by pytest-heavy" in message
    assert mps.status(env)["started_by_pytest_heavy"] is False

    refused = cli(env, "stop")
    assert refused.returncode == mps.EXIT_REFUSED
    assert "was not started by pytest-heavy" in refused.stderr and "--force" in refused.stderr
    assert mps.status(env)["running"]

    forced = cli(env, "stop", "--force")
    assert forced.returncode == 0, forced.stderr
    assert mps.status(env)["running"] is False


def test_start_waits_until_the_daemon_answers(env):
    env["FAKE_MPS_DELAY"] = "0.8"
    began = time.monotonic()
    mps.start(env)
    assert time.monotonic() - began >= 0.8
    assert mps.status(env)["detail"] == "answers"
    mps.stop(env)


def test_start_gives_up_on_a_silent_daemon(env):
    env["FAKE_MPS_DELAY"] = "60"
    result = cli(env, "start", "--timeout", "0.5")
    assert result.returncode == mps.EXIT_FAILED
    assert "did not answer within 0.5 s" in result.stderr and "control.log" in result.stderr


def test_missing_binary(env, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    env["PATH"] = str(empty)
    result = cli(env, "start")
    assert result.returncode == mps.EXIT_MISSING
    assert "nvidia-cuda-mps-control not found on PATH" in result.stderr and result.stdout == ""
    assert mps.status(env)["binary"] is None
    assert cli(env, "stop").returncode == 0  # nothing running: nothing to do, binary or not


def test_binary_without_execute_permission(env, tmp_path):
    install_fake(tmp_path / "noexec", mode=0o644)
    env["PATH"] = str(tmp_path / "noexec")
    result = cli(env, "start")
    assert result.returncode == mps.EXIT_PERMISSION
    assert "may not execute it (permission denied)" in result.stderr


def test_daemon_reports_permission_denied(env):
    env["FAKE_MPS_DENY"] = "1"
    result = cli(env, "start")
    assert result.returncode == mps.EXIT_PERMISSION
    assert "Permission denied" in result.stderr and "-d failed" in result.stderr


def test_pipe_directory_not_usable(env):
    """Not ours: another user's directory (root can chown) or one we may not write (others can chmod)."""
    parent = Path(env["TMPDIR"]) / "locked"
    parent.mkdir()
    if os.geteuid() == 0:
        os.chown(parent, 65534, 65534)
        env["CUDA_MPS_PIPE_DIRECTORY"] = str(parent)
        expected = "belongs to uid 65534"
    else:
        parent.chmod(0o500)
        env["CUDA_MPS_PIPE_DIRECTORY"] = str(parent / "pipe")
        expected = f"cannot create {parent / 'pipe'}"
    result = cli(env, "start")
    assert result.returncode == mps.EXIT_PERMISSION
    assert expected in result.stderr


def test_pipe_directory_too_long_for_the_socket(env):
    env["CUDA_MPS_PIPE_DIRECTORY"] = str(Path(env["TMPDIR"]) / ("x" * 120))
    with pytest.raises(mps.MpsError, match="too long for the control socket"):
        mps.start(env)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="starting a process as another user needs root")
def test_daemon_of_another_user(env):
    folder = Path(tempfile.mkdtemp(prefix="mps-foreign-"))
    folder.chmod(0o755)
    stand_in = folder / mps.CONTROL_BINARY  # a real process, named like the daemon, owned by nobody
    shutil.copy("/bin/sleep", stand_in)
    proc = subprocess.Popen([str(stand_in), "60"], user=65534, group=65534)
    try:
        pipe = Path(env["TMPDIR"]) / "nvidia-mps-tester"
        pipe.mkdir()
        (pipe / mps.PID_FILE).write_text(f"{proc.pid}\n")
        result = cli(env, "start")
        assert result.returncode == mps.EXIT_FOREIGN
        assert f"owned by user nobody (pid {proc.pid})" in result.stderr
        assert cli(env, "stop").returncode == mps.EXIT_FOREIGN
        assert mps.status(env)["owner"] == "nobody"
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(folder)


def test_scripts_export_for_eval(env):
    pipe = Path(env["TMPDIR"]) / "nvidia-mps-tester"
    shell = (f'eval "$(bash {SCRIPTS}/mps-start.sh)" && echo "pipe=$CUDA_MPS_PIPE_DIRECTORY" && '
             f'bash {SCRIPTS}/mps-status.sh --json && bash {SCRIPTS}/mps-stop.sh')
    result = subprocess.run(["bash", "-c", shell], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert f"pipe={pipe}\n" in result.stdout
    status = json.loads(result.stdout.split("\n", 1)[1])
    assert status["running"] and status["clients_pipe_directory"] == str(pipe)
    assert "stopped" in result.stderr and not fake_daemons(pipe)


@pytest.mark.slow
def test_a_pytest_run_after_mps_start_uses_the_users_daemon(env, tmp_path):
    """No exports in this shell: the plugin finds the per-user daemon and points every CUDA client at it."""
    dirs, _ = mps.start(env)
    (tmp_path / "pytest.ini").write_text("[pytest]\nheavy_ram_gib = 4\n")
    (tmp_path / "test_gpu.py").write_text(
        "import os, pytest\n"
        "@pytest.mark.requires_gpu\n"
        f"def test_sees_the_daemon(): assert os.environ['CUDA_MPS_PIPE_DIRECTORY'] == {str(dirs.pipe)!r}\n")
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             "--heavy-assume", "gpus=1x80GiB,compute_mode=exclusive_process,ram=16GiB"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout
    assert "MPS on" in result.stdout and "heavy modules" not in result.stdout  # no parent trap: no routing
    mps.stop(env)
    result = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             "--heavy-assume", "gpus=1x80GiB,compute_mode=exclusive_process,ram=16GiB"],
                            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert "MPS off" in result.stdout and "heavy modules" in result.stdout  # stopped: routed, unset again
    assert result.returncode == 1


WITH_MPS_CMD = [sys.executable, "-c",
                "import os, sys; print('cmd sees', os.environ.get('CUDA_MPS_PIPE_DIRECTORY')); sys.exit(7)"]


def with_mps(environ, assume, cmd, cwd, **kwargs):
    environ = {**environ, "PYTEST_HEAVY_ASSUME": assume}
    return subprocess.run(["bash", str(SCRIPTS / "with-mps.sh"), *cmd], env=environ, cwd=cwd,
                          capture_output=True, text=True, timeout=60, **kwargs)


def test_with_mps_starts_and_stops_around_the_command_in_exclusive_mode(env, tmp_path):
    pipe = Path(env["TMPDIR"]) / "nvidia-mps-tester"
    result = with_mps(env, "gpus=1x80GiB,compute_mode=exclusive_process,mps=off", WITH_MPS_CMD, tmp_path)
    assert result.returncode == 7  # the command's status, although it failed
    assert f"cmd sees {pipe}" in result.stdout
    assert "started" in result.stderr and "stopped" in result.stderr
    assert not fake_daemons(pipe)


def test_with_mps_only_runs_the_command_in_default_mode(env, tmp_path):
    result = with_mps(env, "gpus=1x80GiB,mps=off", WITH_MPS_CMD, tmp_path)
    assert result.returncode == 7
    assert "cmd sees None" in result.stdout and "started" not in result.stderr


def test_with_mps_leaves_a_running_daemon_running(env, tmp_path):
    dirs, _ = mps.start(env)
    result = with_mps(env, "gpus=1x80GiB,compute_mode=exclusive_process,mps=off", WITH_MPS_CMD, tmp_path)
    assert result.returncode == 7 and f"cmd sees {dirs.pipe}" in result.stdout
    assert mps.status(env)["running"]
    mps.stop(env)


def test_with_mps_stops_the_daemon_after_ctrl_c(env, tmp_path):
    pipe = Path(env["TMPDIR"]) / "nvidia-mps-tester"
    cmd = [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(60)"]
    environ = {**env, "PYTEST_HEAVY_ASSUME": "gpus=1x80GiB,compute_mode=exclusive_process,mps=off"}
    proc = subprocess.Popen(["bash", str(SCRIPTS / "with-mps.sh"), *cmd], env=environ, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        assert fake_daemons(pipe)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C: the whole foreground group
        assert proc.wait(timeout=30) == 128 + signal.SIGINT
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "stopped" in proc.stderr.read()
    assert not fake_daemons(pipe)
