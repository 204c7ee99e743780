#!/usr/bin/env bash
# Start this user's NVIDIA MPS control daemon (or keep the running one) and print the variables CUDA
# programs need, for eval:   eval "$(scripts/mps-start.sh)"
# Wraps `pytest-heavy mps start`; messages go to stderr, only the export lines to stdout.
set -euo pipefail
ph="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/pytest-heavy"
[ -x "$ph" ] || ph=pytest-heavy
if [ -t 1 ]; then
  echo "# to use it from this shell: eval \"\$(scripts/mps-start.sh)\"" >&2
fi
exec "$ph" mps start "$@"
