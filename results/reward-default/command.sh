#!/usr/bin/env bash
# Rebuilds the reward head shipped for the default policy (`reward: default`, src/spi_align/data/default_reward/).
# Needs round 0 of results/task1-round0 in runs/task1-round0 (its rollouts and prefix states: about 1 h 10 min on 2
# CPU cores; results/task1-round0/command.sh, which may be stopped once it logs "evaluating sample"). Then ~1 minute.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python results/reward-default/build.py runs/task1-round0 runs/task1-prompts/fit.jsonl \
  src/spi_align/data/default_reward
