#!/usr/bin/env bash
# Reproduces results/bench-tuned-reward: P1 with a reward model tuned on the policy's top 2 layers guiding and picking
# (issue 18). The reward is the layers-tuned lever's model of results/reward-levers (every fit + choice prompt of
# task 1's round 0, 2 best-vs-worst pairs each; ~45 min on 2 CPU cores, after ../task1-round0/vllm/command.sh made
# runs/t1v). spi bench then runs best-of-16 picking with it and 'spi-text', SPI guided by its partial rewards R_t (the
# tuned layers run on the policy's own lower-layer states, on their own KV cache: scoring/top_layers.py), beside the
# usual rows (random heads; their final pick also reads this reward). 4 held-out AlpacaEval prompts x 64 new tokens,
# W = K = 4, L = 16, 3 repeats. About 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python results/reward-levers/levers.py runs/t1v runs/task1-prompts/fit.jsonl --only layers \
  --layer-prompts all --layer-pairs 2 --tune-lr 5e-05 --save runs/tuned --out runs/tuned
.venv/bin/spi bench run_dir=results name=bench-tuned-reward reward=runs/tuned/layers-2 bench.backends=[hf] \
  bench.memory=false bench.value_model=false bench.untraced=false spi.rounds=1
