#!/usr/bin/env bash
# Reproduces results/bench-cpu: `spi bench` with its defaults on the embedded SmolLM2-135M-Instruct (fp32, 2 CPU
# cores): a plain batched sampling loop, best-of-16, SPI-1..3 (W = 4, K = 4, L = 16, random MLP heads) and SPI guided
# by a separate value model of the policy's size, on 4 held-out AlpacaEval prompts × 64 new tokens, 3 repeats in
# alternating order, all in one process; then peak RSS of best-of-16 and SPI-3 in fresh processes and the value model
# alone on 64- and 256-token responses (P3). About 15-20 minutes on an otherwise idle 2-core machine.
set -euo pipefail
spi bench run_dir=results name=bench-cpu
