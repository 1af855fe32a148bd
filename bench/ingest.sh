#!/usr/bin/env bash
# Runs bench/ingest.py in its own venv (bench/requirements-ingest.txt), against build/quiver
# (or $QUIVER_BIN).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-ingest/bin/python ] || ! .venv-ingest/bin/python -c "import sentence_transformers" 2>/dev/null; then
  python3 -m venv .venv-ingest
  .venv-ingest/bin/pip install -q -r bench/requirements-ingest.txt
fi
exec .venv-ingest/bin/python bench/ingest.py "$@"
