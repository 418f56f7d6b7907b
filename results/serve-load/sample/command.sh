#!/usr/bin/env bash
# Reproduces results/serve-load/sample: spi serve under load.
set -euo pipefail
.venv/bin/python scripts/serve_load.py runs/quality-alpaca200 --models sample --clients 200 --requests 200 --sequential 10 --no-sigterm --max-tokens 32 --out results/serve-load/sample max_batch=64
