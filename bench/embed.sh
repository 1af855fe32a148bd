#!/usr/bin/env bash
# Runs bench/embed.py in its own venv (bench/requirements-embed.txt), against build/quiver.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-embed/bin/python ]; then
  python3 -m venv .venv-embed
  .venv-embed/bin/pip install -q -r bench/requirements-embed.txt
fi
exec .venv-embed/bin/python bench/embed.py "$@"
