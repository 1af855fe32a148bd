#!/usr/bin/env bash
# Runs bench/exact.py in its own venv (bench/requirements.txt), against build/quiver.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-bench/bin/python ]; then
  python3 -m venv .venv-bench
  .venv-bench/bin/pip install -q -r bench/requirements.txt
fi
exec .venv-bench/bin/python bench/exact.py "$@"
