#!/usr/bin/env bash
# Reproduces results/spi-alpaca100: SPI (2 rounds) vs plain sampling and best-of-16 on 100 held-out AlpacaEval
# prompts with the embedded SmolLM2-135M-Instruct. Run at commit 3051d7a (later commits changed the sampler's
# random stream and the reward head's weight-decay choice, so other commits give other samples).
# Rerunning the same command resumes an interrupted run; when it completes it writes report.md and a plot.
set -euo pipefail
spi run configs/demo.yaml name=spi-alpaca100 data.limit=100 spi.train_prompts=64 generation.max_new_tokens=32
# The table in table.md (also for an incomplete run) comes from:
python results/spi-alpaca100/partial_table.py runs/spi-alpaca100
