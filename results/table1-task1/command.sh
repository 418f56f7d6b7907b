#!/usr/bin/env bash
# Reproduces results/table1-task1 (see sweep.yaml; about 4 h 10 min on 2 CPU cores). The cells resume batch by
# batch (`spi sweep` skips what a cell's folder holds), so the sweep can be stopped and run again, across sessions
# too: `.venv/bin/python results/snapshot.py save sweeps/table1-task1 results/table1-task1` packs the sweep's folder
# (no prompt texts, no prefix states) into snapshot/ to be committed, and this command loads it back where it is
# missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=2
[ -s runs/task1-prompts/fit.jsonl ] || .venv/bin/python results/task1-round0/make_prompts.py runs/task1-prompts
[ -d runs/sweeps/table1-task1 ] || .venv/bin/python results/snapshot.py load sweeps/table1-task1 results/table1-task1
.venv/bin/spi sweep results/table1-task1/sweep.yaml
cp runs/sweeps/table1-task1/{table.md,table.json,fig5_chunk.png} results/table1-task1/
