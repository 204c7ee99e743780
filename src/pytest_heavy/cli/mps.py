"""``pytest-heavy mps start|stop|status``: the arguments and what is printed; the work is gpu/mps.py's."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..gpu import mps


def _print_status(doc: dict[str, Any]) -> None:
    if doc["running"]:
        whose = "started by pytest-heavy" if doc["started_by_pytest_heavy"] else "not started by pytest-heavy"
        print(f"MPS control daemon: running, pid {doc['pid']} (user {doc['owner']}, {whose}); "
              f"{doc['detail']}")
        print(f"servers: {' '.join(map(str, doc['servers'])) or 'none'}")
    else:
        print(f"MPS control daemon: not running ({doc['detail']})")
    print(f"pipe directory: {doc['pipe_directory']}")
    print(f"log directory: {doc['log_directory']}")
    print(f"binary: {doc['binary'] or mps.CONTROL_BINARY + ' not found on PATH'}")
    if doc["clients_pipe_directory"] != doc["pipe_directory"]:
        print(f"CUDA programs in this shell look in {doc['clients_pipe_directory']}: run "
              f"eval \"$(pytest-heavy mps start)\" or export CUDA_MPS_PIPE_DIRECTORY={doc['pipe_directory']}")


def run(args: argparse.Namespace) -> int:
    """``pytest-heavy mps ...``: messages on stderr; stdout carries only what scripts read."""
    extra = getattr(args, "pytest_args", None)
    if extra:
        print(f"pytest-heavy mps {args.mps_command}: unrecognized arguments: {' '.join(extra)}",
              file=sys.stderr)
        return 2
    try:
        if args.mps_command == "start":
            dirs, message = mps.start(timeout=args.timeout)
            print(message, file=sys.stderr)
            print("\n".join(dirs.exports()))
        elif args.mps_command == "stop":
            print(mps.stop(force=args.force, timeout=args.timeout), file=sys.stderr)
        elif args.json:
            print(json.dumps(mps.status(), indent=2, sort_keys=True))
        else:
            _print_status(mps.status())
    except mps.MpsError as exc:
        print(f"pytest-heavy mps {args.mps_command}: {exc}", file=sys.stderr)
        return exc.code
    return 0


def add_parser(subparsers: Any) -> None:
    """Add ``mps start|stop|status`` to the ``pytest-heavy`` command."""
    parser = subparsers.add_parser(
        "mps", help="start, stop or inspect an NVIDIA MPS control daemon for this user",
        description="Per-user MPS control daemon. Directories: CUDA_MPS_PIPE_DIRECTORY and "
                    "CUDA_MPS_LOG_DIRECTORY, else $TMPDIR/nvidia-mps-USER and $TMPDIR/nvidia-mps-USER-log "
                    "(USER: your real uid's name); another user's directory or daemon is never used or "
                    "stopped. "
                    f"Exit status: 0 done, {mps.EXIT_FAILED} failed, {mps.EXIT_MISSING} binary missing, "
                    f"{mps.EXIT_PERMISSION} permission denied, {mps.EXIT_FOREIGN} another user's daemon, "
                    f"{mps.EXIT_REFUSED} stop refused (not started here; use --force).")
    sub = parser.add_subparsers(dest="mps_command", required=True)
    p = sub.add_parser("start", help="start the daemon (or keep the running one); print export lines "
                                     "for eval")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the daemon to answer (default 10)")
    p = sub.add_parser("stop", help="stop the daemon this tool started")
    p.add_argument("--force", action="store_true",
                   help="also stop a daemon of yours this tool did not start (never another user's)")
    p.add_argument("--timeout", type=float, default=10.0, metavar="S",
                   help="seconds to wait for the daemon to exit (default 10)")
    p = sub.add_parser("status", help="daemon pid, servers and directories")
    p.add_argument("--json", action="store_true", help="print a JSON document")
    parser.set_defaults(func=run)
