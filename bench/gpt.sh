#!/usr/bin/env bash
# Runs bench/gpt.py (training tokens/s, quiver vs PyTorch on the CPU) in its own venv
# (bench/requirements-gpt.txt), against build/quiver unless --quiver says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-gpt/bin/python ]; then
  python3 -m venv .venv-gpt
  .venv-gpt/bin/pip install -q -r bench/requirements-gpt.txt
fi
exec .venv-gpt/bin/python bench/gpt.py "$@"
