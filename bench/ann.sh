#!/usr/bin/env bash
# Runs bench/ann.py in its own venv (bench/requirements-ann.txt), against build/quiver
# (QUIVER_BIN overrides). Arguments go to bench/ann.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-ann/bin/python ]; then
  python3 -m venv .venv-ann
  .venv-ann/bin/pip install -q -r bench/requirements-ann.txt
fi
export QUIVER_BIN="${QUIVER_BIN:-$PWD/build/quiver}"
exec .venv-ann/bin/python bench/ann.py "$@"
