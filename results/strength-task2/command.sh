#!/usr/bin/env bash
# Reproduces results/strength-task2 (issue 23, item 2 on task 2; vLLM backend, 2 CPU cores; README.md gives the time).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=2
.venv/bin/python results/strength-task2/make_prompts.py runs/task2-prompts
.venv/bin/spi sweep results/strength-task2/sweep.yaml
.venv/bin/python results/strength-task1/choose.py runs/sweeps/strength-task2 > results/strength-task2/choose.md
cp runs/sweeps/strength-task2/{table.md,table.json,fig4_strategies.png} results/strength-task2/
