#!/usr/bin/env bash
# snapshot.sh save|load: see snapshot.py (carries runs/t1e across working sessions, prompt texts left out).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec .venv/bin/python results/frontier-task1-eval200/snapshot.py "$@"
