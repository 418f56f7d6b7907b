#!/usr/bin/env bash
# Reproduces results/serve-load: spi serve under load.
set -euo pipefail
.venv/bin/python scripts/serve_load.py runs/quality-alpaca200 --models spi-1 bon-16 --clients 200 --requests 200 --sequential 10 --sigterm-clients 32 --max-tokens 32 --out results/serve-load
