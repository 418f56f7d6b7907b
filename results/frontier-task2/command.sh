#!/usr/bin/env bash
# Task 2's compute frontier (issue 23): VADER sentiment guides and picks, TextBlob polarity judges (never seen by any
# method); the config of ../quality-sentiment-tree (100 eval prompts, 48 new tokens, round 0 a [4, 2] sampling tree
# on 128 training prompts, SPI-1 and SPI-2 with anchored values) on the vLLM backend, at the issue's 200 eval prompts
# (the first 100 are quality-sentiment-tree's), with the frontier section on: 64 samples a prompt for best-of-N at
# N = 1..64 (subset estimator) and SPI-1 / SPI-2 at three beam budgets. Nothing is chosen on this task (the settings
# are task 1's). About 2 h 20 min on 2 CPU cores (2026-12-06; README.md); it resumes batch by batch, and across
# sessions with `.venv/bin/python results/snapshot.py save t2f results/frontier-task2` (loaded back below).
set -euo pipefail
cd "$(dirname "$0")/../.."
source results/vllm-cpu.sh  # sets $V, the engine settings
F="frontier.enabled=true frontier.budgets=[[4,4,16],[2,4,16],[2,2,16]]"
export OMP_NUM_THREADS=2
[ -d runs/t2f ] || .venv/bin/python results/snapshot.py load t2f results/frontier-task2
.venv/bin/spi run results/quality-sentiment-tree/config.yaml name=t2f data.limit=200 $F $V
mkdir -p results/frontier-task2
cp runs/t2f/{report.md,results.json,frontier.json,config.yaml} runs/t2f/*.png results/frontier-task2/
cp -r runs/t2f/values results/frontier-task2/
