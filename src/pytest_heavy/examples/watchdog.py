"""If pytest dies, even by SIGKILL, the examples it was running die with it, their sessions too.

An isolated module's child arms ``PR_SET_PDEATHSIG`` itself (``procs.guard_child_tree``). An example
cannot do that cheaply: ctypes would cost every example ~4 ms of imports, and a ``preexec_fn`` makes
CPython fork the whole pytest process instead of using vfork. So one small process per session, started
with its first example, does it for all of them: it reads a pipe from pytest on which each example's
pid is announced when it starts and withdrawn once it was reaped. When the pipe reaches its end
(pytest exited or was killed) it SIGKILLs every process in the session of each example still announced
(each example leads a session of its own), then exits. At the end of a session nothing is announced
any more and pytest ends the watchdog.

A pid outlives its process: once pytest is gone, init reaps the examples and their pids (so their
session ids) may be taken by anyone's new session. So the watchdog notes each example's start time
(``/proc/PID/stat``) when it is announced, and leaves a session alone whose id is now held by a process
that started at another time.
"""

from __future__ import annotations

import os
import subprocess
import sys

# Run as `python -I -S -c WATCHDOG`: isolated from the project's environment, no site imports. Its own
# session, so Ctrl-C in the terminal reaches pytest (which ends the examples itself), not the watchdog.
WATCHDOG = """\
import os, sys
def started(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
running = {}
for line in sys.stdin.buffer:
    pid = int(line)
    if pid > 0:
        running[pid] = started(pid)
    else:
        running.pop(-pid, None)
for sid, when in running.items():
    now = started(sid)
    if now is not None and now != when:
        continue  # the pid was reused: someone else's session
    try:
        os.killpg(sid, 9)
    except OSError:
        pass
    if os.path.isdir("/proc"):
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.getsid(int(entry)) == sid:
                    os.kill(int(entry), 9)
            except OSError:
                pass
"""


class Watchdog:
    """pytest's side of the watchdog: announce and withdraw examples, close at the session's end."""

    def __init__(self) -> None:
        # No output: it holds none of pytest's pipes (or capture files) that someone might wait on.
        self.proc = subprocess.Popen([sys.executable, "-I", "-S", "-c", WATCHDOG], stdin=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        assert self.proc.stdin is not None
        self._fd = self.proc.stdin.fileno()

    def watch(self, pid: int) -> None:
        """An example (a session leader) started."""
        self._send(pid)

    def release(self, pid: int) -> None:
        """The example was reaped: its pid may be reused from now on."""
        self._send(-pid)

    def _send(self, number: int) -> None:
        try:
            os.write(self._fd, b"%d\n" % number)
        except OSError:  # the watchdog is gone (killed from outside): the examples still run, unguarded
            pass

    def close(self) -> None:
        """End of the session: nothing is announced any more, so the watchdog has nothing to do. It is
        killed rather than left to see EOF, which a forked child holding a copy of the pipe delays."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait()
