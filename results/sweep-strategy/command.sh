#!/usr/bin/env bash
# Reproduces results/sweep-strategy: Figure 4 shape (SPI-1 selection strategies vs best-of-16 at L = 16) on 32
# held-out AlpacaEval prompts with the embedded SmolLM2-135M-Instruct. Run after results/sweep-chunk/command.sh,
# whose round 0 and L = 16 cell it reuses; then about 20 minutes on 2 CPU cores (alone: about 25).
set -euo pipefail
spi sweep results/sweep-strategy/spec.yaml
cp runs/sweeps/sweep-strategy/table.md runs/sweeps/sweep-strategy/table.json \
  runs/sweeps/sweep-strategy/fig4_strategies.png results/sweep-strategy/
