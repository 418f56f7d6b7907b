#!/usr/bin/env bash
# Reproduces results/sweep-baselines: Table 1 shape (SPI-1 vs BoN-E, BoN-I, weak-to-strong search and DPO at the
# same budget) on 32 held-out AlpacaEval prompts with the embedded SmolLM2-135M-Instruct. Run after
# results/sweep-chunk/command.sh, whose round 0 and L = 16 cell it reuses.
set -euo pipefail
spi sweep results/sweep-baselines/spec.yaml
cell=$(python -c "import json; print(json.load(open('runs/sweeps/sweep-baselines/cells.json'))['cells'][0]['key'])")
cp "runs/sweeps/cells/$cell/report.md" results/sweep-baselines/report.md
