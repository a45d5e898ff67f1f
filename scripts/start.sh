#!/usr/bin/env bash
# Main job on the embedded default: set up, ingest the sample corpus in data/, serve on :8000.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1
kb ingest data/sample --collection default --prune
exec kb serve --host "${KB_HOST:-127.0.0.1}" --port "${KB_PORT:-8000}"
