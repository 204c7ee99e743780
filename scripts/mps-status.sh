#!/usr/bin/env bash
# The MPS control daemon's pid, servers and directories (--json for scripts).
# Wraps `pytest-heavy mps status`.
set -euo pipefail
ph="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/pytest-heavy"
[ -x "$ph" ] || ph=pytest-heavy
exec "$ph" mps status "$@"
