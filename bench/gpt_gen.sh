#!/usr/bin/env bash
# Runs bench/gpt_gen.py (generation tokens/s, quiver vs PyTorch) in bench/gpt.sh's venv
# (.venv-gpt from bench/requirements-gpt.txt) plus bench/requirements-gpt-gen.txt's
# additions, against build/quiver unless --quiver says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv-gpt/bin/python ] || python3 -m venv .venv-gpt
if ! .venv-gpt/bin/python -c "import torch, transformers, tokenizers, safetensors" 2>/dev/null; then
  .venv-gpt/bin/pip install -q -r bench/requirements-gpt-gen.txt
fi
exec .venv-gpt/bin/python bench/gpt_gen.py "$@"
