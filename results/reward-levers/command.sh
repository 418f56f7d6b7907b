#!/usr/bin/env bash
# Reproduces results/reward-levers (levers.md, levers.json). Needs round 0 of results/task1-round0 in
# runs/task1-round0 (its rollouts and prefix states: about 1 h 10 min on 2 CPU cores; results/task1-round0/command.sh,
# which may be stopped once it logs "evaluating sample"). Then about 20 minutes (one forward pass keeping every
# layer's end state, for the layer lever; the rest reads the cached states), and about 20 CPU minutes more for the
# "layers tuned" row (the top 2 layers tuned by the library's trainer on 50 fit + choice prompts x 2 pairs, read on
# every held-out prompt: ~1200 CPU s estimated from a same-shape random model, maybe up to 1.4x; not yet timed on the
# real run). That row alone, merged into levers.md / levers.json without redoing the others:
#   .venv/bin/python results/reward-levers/levers.py runs/task1-round0 runs/task1-prompts/fit.jsonl --only layers
# (--layers 2 4 for a row per n, each ~20 min; --layer-prompts / --layer-pairs / --layer-heldout move the caps).
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python results/reward-levers/levers.py runs/task1-round0 runs/task1-prompts/fit.jsonl
