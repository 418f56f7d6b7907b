#!/usr/bin/env bash
# Reproduces results/serve-load-vllm (issue 20, item 5): spi serve under load on a run made with policy.backend=vllm
# (runs/demo-vllm, which ../demo-backends/command.sh makes), the same load as ../serve-load (transformers):
# 200 concurrent clients, 200 requests per model, 10 one at a time, SIGTERM under 32 clients, 32 new tokens.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=2
.venv/bin/python scripts/serve_load.py runs/demo-vllm --models spi-1 bon-16 --clients 200 --requests 200 \
  --sequential 10 --sigterm-clients 32 --max-tokens 32 --out results/serve-load-vllm
