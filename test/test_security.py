"""Issue #22's findings, each reproduced: what another user controls is never adopted, signalled or
written through, bad numbers are usage errors, and nothing secret or foreign leaks into children,
daemons or reports.

A second user is needed for most of them: as root, a helper process runs as uid 65534 (``nobody``)
and files are handed to it with ``chown``. Elsewhere those tests skip, saying why.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from methods import PARAMS
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


# --- stores: no write through a planted link, finite numbers only -----------------------------------

INI = "[pytest]\nheavy_ram_gib = 4\nheavy_durations_path = ci/durations.json\n"


@pytest.fixture
def store_pytester(heavy_pytester: pytest.Pytester) -> pytest.Pytester:
    heavy_pytester.makeini(INI)
    heavy_pytester.makepyfile(test_one="def test_one(): pass\n")
    (heavy_pytester.path / "ci").mkdir()
    return heavy_pytester


def test_the_store_never_writes_through_a_link_at_its_temporary_name(store_pytester, tmp_path_factory):
    """The temporary name used to be ``.<name>.<pid>.tmp``: a link planted there (the session runs in
    this process, so the pid is known) was followed and the file it names overwritten."""
    victim = tmp_path_factory.mktemp("victim") / "precious.txt"
    victim.write_text("mine\n")
    committed = store_pytester.path / "ci" / "durations.json"
    for name in ("durations.json", "durations.json.peaks.json"):
        (committed.parent / f".{name}.{os.getpid()}.tmp").symlink_to(victim)
    store_pytester.runpytest("--heavy-store-durations").assert_outcomes(passed=1)
    assert victim.read_text() == "mine\n"
    assert not committed.is_symlink() and "test_one.py::test_one" in json.loads(committed.read_text())


def test_the_committed_file_replaces_a_link_at_its_name(store_pytester, tmp_path_factory):
    victim = tmp_path_factory.mktemp("victim") / "precious.txt"
    victim.write_text("mine\n")
    committed = store_pytester.path / "ci" / "durations.json"
    victim.write_text("{}\n")  # a durations file, so it is merged into, not refused
    committed.symlink_to(victim)
    store_pytester.runpytest("--heavy-store-durations").assert_outcomes(passed=1)
    assert victim.read_text() == "{}\n" and not committed.is_symlink()


def test_the_split_snapshot_never_writes_through_a_link_at_its_temporary_name(
        store_pytester, tmp_path_factory, monkeypatch):
    from pytest_heavy.split.durations import SNAPSHOT_ENV

    victim = tmp_path_factory.mktemp("victim") / "precious.txt"
    victim.write_text("mine\n")
    snapshot = store_pytester.path / "run" / "durations.json"
    snapshot.parent.mkdir()
    (snapshot.parent / f".durations.json.{os.getpid()}.tmp").symlink_to(victim)
    monkeypatch.setenv(SNAPSHOT_ENV, str(snapshot))
    store_pytester.runpytest("--heavy-split=1/1").assert_outcomes(passed=1)
    assert victim.read_text() == "mine\n" and json.loads(snapshot.read_text()) == {}


@pytest.mark.parametrize("text", ['{"test_one.py::test_one": Infinity}', '{"test_one.py::test_one": 1e400}',
                                  '{"test_one.py::test_one": NaN}', '{"test_one.py::test_one": 1e308}',
                                  "[" * 100_000 + "]" * 100_000])
def test_bad_numbers_and_deep_nesting_in_the_durations_file_are_usage_errors(store_pytester, text):
    committed = store_pytester.path / "ci" / "durations.json"
    committed.write_text(text)
    result = store_pytester.runpytest("--heavy-split=1/2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --heavy-split: {committed}: *"])
    assert "INTERNALERROR" not in result.stdout.str() + result.stderr.str()


@pytest.mark.parametrize("text", ['{"test_one.py": {"wall_s": Infinity, "rss_mib": 1}}',
                                  '{"test_one.py": {"wall_s": 1, "rss_mib": NaN}}',
                                  '{"test_one.py": {"wall_s": 1, "rss_mib": 1, "gpu_mib": [1e400]}}'])
def test_bad_numbers_in_the_peaks_file_are_usage_errors(store_pytester, text):
    peaks = store_pytester.path / "ci" / "durations.json.peaks.json"
    peaks.write_text(text)
    store_pytester.makepyfile(test_one="import pytest\npytestmark = pytest.mark.requires_gpu_isolation\n"
                                       "def test_one(): pass\n")
    result = store_pytester.runpytest_subprocess("--heavy-workers=auto", "--heavy-isolate=always",
                                                 "--heavy-assume", "gpus=1x80GiB,ram=16GiB")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"ERROR: --heavy-workers auto: {peaks}: test_one.py: *"])


@pytest.mark.parametrize("value", [1e12, 1e308])
def test_doctor_plan_prints_no_inf_or_nan(store_pytester, value):
    """1e308 per module used to add up to an "inf" makespan; it is refused now, and the largest value
    accepted (1e12) still sums to a finite one."""
    store_pytester.makepyfile(**{f"test_gpu{i}": "import pytest\n@pytest.mark.requires_gpu_isolation\n"
                                 "def test_g(): pass\n" for i in range(3)})
    peaks = {f"test_gpu{i}.py": {"wall_s": value, "rss_mib": 1, "gpu_mib": [1]} for i in range(3)}
    (store_pytester.path / "ci" / "durations.json.peaks.json").write_text(json.dumps(peaks))
    result = subprocess.run([sys.executable, "-m", "pytest_heavy.cli", "doctor", "--plan"],
                            cwd=store_pytester.path, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTEST_HEAVY_ASSUME": "gpus=1x80GiB,ram=16GiB"})
    output = (result.stdout + result.stderr).replace(str(store_pytester.path), "<project>").lower()
    assert "inf" not in output and "nan" not in output
    if value == 1e12:
        assert result.returncode == 0 and "against 3000000000000.0s one at a time" in result.stdout, output
    else:
        assert result.returncode != 0 and "durations.json.peaks.json: test_gpu" in result.stderr, output


def test_an_absurd_gpu_count_is_refused_at_once(heavy_pytester):
    heavy_pytester.makepyfile(test_one="def test_one(): pass\n")
    result = heavy_pytester.runpytest("--heavy-assume", "gpus=100000000x1GiB")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*gpus: 100000000 GPUs is more than any machine has (at most 1024)*"])
    result = heavy_pytester.runpytest("--heavy-assume", "ram=1" + "0" * 400 + "GiB")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*ram: * is more than any machine has*"])


# --- what crosses from a child to the parent, and from a child to what its tests start ---------------

ISOLATED = "import pytest\npytestmark = pytest.mark.requires_heavy_ram\n"


@pytest.mark.parametrize("method", PARAMS)
def test_a_childs_warning_category_is_never_imported_into_the_parent(heavy_pytester, method):
    """The parent used to import whatever module a child named as a warning's category."""
    heavy_pytester.makepyfile(
        onlychild="class LibWarning(FutureWarning):\n    pass\n",
        conftest="import sys\nfrom pytest_heavy import wire\n"
                 "def pytest_sessionfinish(session):\n"
                 "    if not wire.in_child():\n"
                 "        open('parent-modules.txt', 'w').write(str('onlychild' in sys.modules))\n",
        test_a=ISOLATED + "import warnings\ndef test_warns():\n"
                          "    import onlychild\n"
                          "    warnings.warn('from the library', onlychild.LibWarning)\n",
        test_b=ISOLATED + "def test_b(): pass\n")
    result = heavy_pytester.runpytest_subprocess("--heavy-start", method, "-W", "error::DeprecationWarning")
    result.assert_outcomes(passed=2, warnings=1)
    result.stdout.fnmatch_lines(["*FutureWarning: from the library*"])  # its nearest base the parent has
    assert (heavy_pytester.path / "parent-modules.txt").read_text() == "False"


@pytest.mark.parametrize("method", PARAMS)
def test_the_child_marker_does_not_reach_what_tests_start(heavy_pytester, method, tmp_path_factory):
    """A nested pytest of a project that never opted in stays off (it came up enabled, as a child):
    the marker it inherits names the child, not itself."""
    other = tmp_path_factory.mktemp("other")
    (other / "test_other.py").write_text("import pytest\n@pytest.mark.slow\ndef test_slow(): pass\n")
    heavy_pytester.makepyfile(
        test_a=ISOLATED + f"""
import os, subprocess, sys
from pytest_heavy import wire

def test_nested():
    assert wire.in_child() and 'PYTEST_HEAVY_HARDWARE' not in os.environ
    env = {{k: v for k, v in os.environ.items() if k not in ('PYTEST_ADDOPTS', 'PYTEST_HEAVY_ASSUME')}}
    done = subprocess.run([sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider', '-rs', {str(other)!r}],
                          cwd={str(other)!r}, env=env, capture_output=True, text=True)
    assert 'heavy: off' in done.stdout, done.stdout
    assert '1 passed' in done.stdout, done.stdout
""",
        test_b=ISOLATED + "def test_b(): pass\n")
    result = heavy_pytester.runpytest_subprocess("--heavy-start", method)
    result.assert_outcomes(passed=2)


# --- ending processes: a reused pid is not the session it used to lead -------------------------------

NS_LAST_PID = Path("/proc/sys/kernel/ns_last_pid")


def take_pid(pid: int, argv: list[str], **popen: object) -> subprocess.Popen[bytes]:
    """Start ``argv`` with exactly ``pid`` (the kernel hands out ns_last_pid + 1), as a reused pid."""
    if not NS_LAST_PID.exists() or not os.access(NS_LAST_PID, os.W_OK):
        pytest.skip("choosing a new process's pid needs a writable /proc/sys/kernel/ns_last_pid (root)")
    for _ in range(200):  # other processes on the machine may take it first
        NS_LAST_PID.write_text(str(pid - 1))
        proc = subprocess.Popen(argv, **popen)  # type: ignore[call-overload]
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    pytest.skip(f"pid {pid} kept being taken by other processes")


def reaped_session_leader() -> tuple[int, psutil.Process]:
    """A session leader of ours, seen while it ran (as the tree monitor sees it), then reaped."""
    leader = subprocess.Popen(["sleep", "30"], start_new_session=True)
    seen = psutil.Process(leader.pid)
    # Creation times tick in 1/100 s: a process started in the same tick would pass for this one (a real
    # pid comes back only after the whole pid space was handed out, not within milliseconds).
    time.sleep(0.05)
    leader.kill()
    leader.wait()
    return leader.pid, seen


def session(sid: int) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                found.append(proc)
        except OSError:
            continue
    return found


def end_session(leader: subprocess.Popen[bytes]) -> None:
    if leader.poll() is None:
        os.killpg(leader.pid, signal.SIGKILL)
    leader.wait()


STRANGER = ["setsid", "sh", "-c", "sleep 30 & wait"]  # leads a session; its sleep is a member


@as_root
def test_leftovers_of_a_reaped_leader_spare_a_new_session_on_its_pid():
    from pytest_heavy import procs

    sid, seen = reaped_session_leader()
    stranger = take_pid(sid, STRANGER, user=NOBODY, group=NOBODY)
    try:
        members: list[psutil.Process] = []
        while len(members) < 2:  # the stranger and its sleep, both in session ``sid``
            members = session(sid)
        assert procs.kill_leftovers(sid, [seen]) == []
        assert all(p.is_running() for p in members)
    finally:
        end_session(stranger)


def unread(fd: int) -> int:
    """Bytes written to a pipe that its reader has not read yet."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


@as_root
def test_the_examples_watchdog_spares_a_new_session_on_a_reaped_examples_pid():
    from pytest_heavy.examples.watchdog import Watchdog

    dog = Watchdog()
    example = subprocess.Popen(["sleep", "30"], start_new_session=True)
    dog.watch(example.pid)
    assert dog.proc.stdin is not None
    while unread(dog.proc.stdin.fileno()):  # the watchdog took the announcement (and noted the start)
        pass
    time.sleep(0.05)  # start times tick in 1/100 s (see reaped_session_leader)
    example.kill()
    example.wait()  # pytest dies before it withdraws the pid, and init reaped the example
    stranger = take_pid(example.pid, STRANGER, user=NOBODY, group=NOBODY)
    try:
        while len(session(stranger.pid)) < 2:
            pass
        dog.proc.stdin.close()  # what the watchdog sees when pytest dies
        assert dog.proc.wait(timeout=30) == 0
        assert stranger.poll() is None and len(session(stranger.pid)) == 2
    finally:
        end_session(stranger)


# --- reports name only this run's processes --------------------------------------------------------

LINGERS = """
import pytest, pynvml
pytestmark = [pytest.mark.requires_gpu, pytest.mark.requires_gpu_isolation]

def test_allocate():
    pynvml.fake_allocate(1024, linger_s=30)  # outlives the child: not released in time
"""


@as_root
def test_memory_not_released_names_only_this_runs_processes(heavy_pytester, monkeypatch):
    """Another user's GPU process is counted, never named: its command line may hold secrets."""
    stranger = subprocess.Popen(["sleep", "600"], user=NOBODY, group=NOBODY)
    try:
        device = {"uuid": "GPU-aaaaaaaa-1111-2222-3333-444444444444", "name": "NVIDIA Fake",
                  "total_mib": 16384, "used_mib": 0, "compute_mode": 0,
                  "processes": [{"pid": stranger.pid, "used_mib": 700}]}
        path = [str(FAKES), os.environ.get("PYTHONPATH")]
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, path)))
        monkeypatch.setenv("FAKE_PYNVML", json.dumps({"devices": [device]}))
        monkeypatch.setenv("FAKE_PYNVML_STATE", str(heavy_pytester.path / "allocations.jsonl"))
        monkeypatch.setenv("PYTEST_HEAVY_ASSUME", "ram=16GiB")
        monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(heavy_pytester.path / "no-mps"))
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        heavy_pytester.makeini("[pytest]\nheavy_ram_gib = 4\nheavy_release_timeout_s = 0\n")
        heavy_pytester.makepyfile(test_a=LINGERS, test_b=LINGERS.replace("1024", "512"))
        result = heavy_pytester.runpytest_subprocess("-p", "pynvml", "--heavy-report", "heavy.json")
        result.assert_outcomes(passed=2)
        rows = json.loads((heavy_pytester.path / "heavy.json").read_text())["modules"]
        released = [row["released"] for row in rows]
        assert any("1 other process 700 MiB" in text for text in released), released
        assert not any(f"pid {stranger.pid}" in text for text in released), released
        assert f"pid {stranger.pid}" not in result.stdout.str() and "sleep 600" not in result.stdout.str()
    finally:
        stranger.kill()
        stranger.wait()
