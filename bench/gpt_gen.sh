#!/usr/bin/env bash
# Runs bench/gpt_gen.py (generation tokens/s, quiver vs PyTorch) in its own venv
# (bench/requirements-gpt-gen.txt), against build/quiver unless --quiver says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-gpt-gen/bin/python ]; then
  python3 -m venv .venv-gpt-gen
  .venv-gpt-gen/bin/pip install -q -r bench/requirements-gpt-gen.txt
fi
exec .venv-gpt-gen/bin/python bench/gpt_gen.py "$@"
