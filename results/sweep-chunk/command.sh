#!/usr/bin/env bash
# Reproduces results/sweep-chunk: Table 3 / Figure 5 shape (SPI-1 vs best-of-16 by chunk length L = 4..64) on 32
# held-out AlpacaEval prompts with the embedded SmolLM2-135M-Instruct. About 35 minutes on 2 CPU cores; a rerun
# only computes the cells whose run directory (runs/sweeps/cells/<config hash>) has no results.json yet.
set -euo pipefail
spi sweep results/sweep-chunk/spec.yaml
cp runs/sweeps/sweep-chunk/table.md runs/sweeps/sweep-chunk/table.json runs/sweeps/sweep-chunk/fig5_chunk.png \
  results/sweep-chunk/
