#!/usr/bin/env bash
# Reproduces results/sweep-reward-guide: SPI-1 vs best-of-16 with and without the reward model scoring partial
# responses as guidance, at L = 8 and 16, on 32 held-out AlpacaEval prompts with the embedded SmolLM2-135M-Instruct.
# Run after results/sweep-chunk/command.sh, whose round 0 and weight-0 cells it reuses.
set -euo pipefail
spi sweep results/sweep-reward-guide/spec.yaml
cp runs/sweeps/sweep-reward-guide/table.md runs/sweeps/sweep-reward-guide/table.json \
  runs/sweeps/sweep-reward-guide/fig5_chunk.png results/sweep-reward-guide/
# report-L16-reward-guide.md is the report.md of the L = 16, weight 1 cell: runs/sweeps/cells/<key>/, with the key
# listed in runs/sweeps/sweep-reward-guide/cells.json.
