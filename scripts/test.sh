#!/usr/bin/env bash
# Lint, format check and the test suite, on a fresh machine too (sets up .venv first).
set -euo pipefail
cd "$(dirname "$0")/.."
KB_SETUP_BROWSER=1 KB_SETUP_RAY=1 bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
ruff check .
ruff format --check .
# -m "": the full suite, slow tests included (pyproject.toml's addopts leave them out)
python -m pytest -q -p no:cacheprovider -m "" "$@"
