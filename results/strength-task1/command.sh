#!/usr/bin/env bash
# Reproduces results/strength-task1 (issue 23, item 2): about 70 minutes on 2 CPU cores (vLLM backend).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=2
.venv/bin/python results/task1-round0/make_prompts.py runs/task1-prompts
.venv/bin/spi sweep results/strength-task1/sweep.yaml
.venv/bin/python results/strength-task1/choose.py runs/sweeps/strength-task1 > results/strength-task1/choose.md
cp runs/sweeps/strength-task1/{table.md,table.json,fig4_strategies.png} results/strength-task1/
