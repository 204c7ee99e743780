#!/usr/bin/env bash
# with-mps.sh CMD [ARGS...]: run CMD, inside an MPS daemon when this machine needs one (`make test-gpu`).
#
# When a visible GPU is in EXCLUSIVE_PROCESS mode (as `pytest-heavy doctor --json` sees it), MPS is not
# running and nvidia-cuda-mps-control exists, MPS is started first and the daemon this script started
# is stopped afterwards, also when CMD fails or is interrupted (Ctrl-C reaches CMD, which ends; the
# daemon is stopped after it). Otherwise CMD just runs. The exit status is CMD's.
set -uo pipefail
if [ $# -eq 0 ]; then
  echo "usage: $0 CMD [ARGS...]" >&2
  exit 2
fi
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ph="$root/.venv/bin/pytest-heavy"
py="$root/.venv/bin/python"
[ -x "$ph" ] || ph=pytest-heavy
[ -x "$py" ] || py=python3

trap_risk=$("$ph" doctor --json 2>/dev/null | "$py" -c 'import json, sys
h = json.load(sys.stdin)["hardware"]
print(int(not h["mps"] and any(g["compute_mode"] == "exclusive_process" for g in h["gpus"])))') || trap_risk=0
if [ "$trap_risk" != 1 ] || ! command -v nvidia-cuda-mps-control >/dev/null; then
  exec "$@"
fi

running=$("$ph" mps status --json | "$py" -c 'import json, sys; print(int(json.load(sys.stdin)["running"]))') \
  || running=0
if ! exports=$("$ph" mps start); then
  echo "with-mps: MPS could not be started; running without it (GPU tests run one child at a time)" >&2
  exec "$@"
fi
eval "$exports"
if [ "$running" != 1 ]; then
  trap '"$ph" mps stop >&2 || echo "with-mps: stop it with scripts/mps-stop.sh" >&2' EXIT
fi
# Let CMD see the signal and finish; the EXIT trap then stops the daemon and the script exits with CMD's status.
trap ':' INT TERM
"$@"
exit $?
