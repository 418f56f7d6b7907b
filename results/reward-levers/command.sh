#!/usr/bin/env bash
# Reproduces results/reward-levers (levers.md, levers.json). Needs round 0 of results/task1-round0 in
# runs/task1-round0 (its rollouts and prefix states: about 1 h 10 min on 2 CPU cores; results/task1-round0/command.sh,
# which may be stopped once it logs "evaluating sample"). Then about 20 minutes (one forward pass keeping every
# layer's end state, for the layer lever; the rest reads the cached states).
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python results/reward-levers/levers.py runs/task1-round0 runs/task1-prompts/fit.jsonl
