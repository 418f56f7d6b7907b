#!/usr/bin/env bash
# Reproduces results/spi-alpaca100: SPI (2 rounds) vs plain sampling and best-of-16 on 100 held-out AlpacaEval
# prompts with the embedded SmolLM2-135M-Instruct. About 30-40 minutes on 2 CPU cores.
set -euo pipefail
spi run configs/demo.yaml name=spi-alpaca100 data.limit=100 spi.train_prompts=64 generation.max_new_tokens=32
