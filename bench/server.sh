#!/usr/bin/env bash
# Runs bench/server.py in its own venv (bench/requirements-server.txt) against build/quiver
# (QUIVER_BIN overrides); installs wrk from Debian when it is missing. Arguments go to
# bench/server.py.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
  sudo apt-get install -y wrk || apt-get install -y wrk
fi
if [ ! -x .venv-server/bin/python ]; then
  python3 -m venv .venv-server
  .venv-server/bin/pip install -q numpy==2.4.6 httpx==0.28.1
  # The peers are optional: a peer that does not install is reported as skipped.
  .venv-server/bin/pip install -q -r bench/requirements-server.txt || true
fi
export QUIVER_BIN="${QUIVER_BIN:-$PWD/build/quiver}"
exec .venv-server/bin/python bench/server.py "$@"
