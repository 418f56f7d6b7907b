#!/usr/bin/env bash
# Task 2's SPI-1 against best-of-16 on the transformers backend, where the search's forward tokens are within 5% of
# best-of-16's (issue 23's compute condition; on vLLM the state engine's reads make them 1.9x). The config, prompts,
# round-0 rollouts and V_0 are ../rounds-task2's: its run folder's round 0 is copied into a new run (the config
# file is left behind, so this run records its own: the same settings with the transformers backend and one round),
# and sample, best-of-16 and SPI-1 are generated afresh on the 200 eval prompts and judged by TextBlob. Nothing is
# chosen on eval prompts. About 1 h on 2 CPU cores (plus ../rounds-task2's hour when its run folder is missing).
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=2
if [ ! -d runs/t2h ]; then
  [ -f runs/t2r/values/round-0.json ] || bash results/rounds-task2/command.sh
  mkdir -p runs/t2h.tmp/values
  cp runs/t2r/rollouts-0.jsonl runs/t2r/rollouts-0.cost.json runs/t2r/reward_model.json runs/t2h.tmp/
  cp -r runs/t2r/values/round-0 runs/t2r/values/round-0.json runs/t2r/values/round-0.cost.json runs/t2h.tmp/values/
  mv runs/t2h.tmp runs/t2h
fi
.venv/bin/spi run results/quality-sentiment-tree/config.yaml name=t2h data.limit=200 spi.rounds=1
cp runs/t2h/{report.md,results.json,config.yaml} runs/t2h/*.png results/quality-task2-hf/
