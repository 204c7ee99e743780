#!/usr/bin/env bash
# Stop the NVIDIA MPS control daemon that `scripts/mps-start.sh` started (--force: any of yours).
# Wraps `pytest-heavy mps stop`.
set -euo pipefail
ph="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/pytest-heavy"
[ -x "$ph" ] || ph=pytest-heavy
exec "$ph" mps stop "$@"
