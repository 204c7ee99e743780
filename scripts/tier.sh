#!/usr/bin/env bash
# tier.sh NAME [pytest args...]: run one of this repository's test tiers. The tiers are defined here
# once: the Make targets (`make test`, `make test-fast`, ...) and the tox environments of the same
# names both run this script, so a tier's selection and report options cannot drift between them.
#
# The product's tiers (default, fast, qualitative, slow, gpu) come from `pytest-heavy tier NAME`, which
# owns their marker expressions and ends a tier with no tests here with exit 0 and a line saying so;
# `heavy` is this repository's own tier: its real-library and held-GPU-memory modules, all isolated.
#
# TIER_RUN is how a Python module is started: default `python`; Make passes the .venv's python and tox
# `coverage run` (measured from before pytest imports its plugins).
set -euo pipefail
if [ $# -eq 0 ]; then
  echo "usage: $0 default|fast|qualitative|slow|gpu|heavy [pytest args...]" >&2
  exit 2
fi
name=$1
shift
read -ra run <<< "${TIER_RUN:-python}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
case "$name" in
  default) exec "${run[@]}" -m pytest_heavy.cli tier default -- -ra "$@" ;;
  fast) exec "${run[@]}" -m pytest_heavy.cli tier fast -- "$@" ;;
  qualitative | slow) exec "${run[@]}" -m pytest_heavy.cli tier "$name" -- -rs "$@" ;;
  # with-mps.sh starts MPS first on EXCLUSIVE_PROCESS GPUs when it can, and stops it afterwards.
  gpu) exec bash "$here/with-mps.sh" "${run[@]}" -m pytest_heavy.cli tier gpu -- -rs test "$@" ;;
  heavy) exec "${run[@]}" -m pytest -rs --heavy-isolate always test/backends test/gpu "$@" ;;
  *)
    echo "$0: unknown tier '$name'; choose from default, fast, qualitative, slow, gpu, heavy" >&2
    exit 2
    ;;
esac
