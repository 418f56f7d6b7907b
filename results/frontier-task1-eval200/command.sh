#!/usr/bin/env bash
# Reproduces results/frontier-task1-eval200: task 1's compute frontier (issue 23) on the 200 AlpacaEval eval prompts,
# on the vLLM backend, with the round 0 of ../task1-round0 (tree rollouts of the 459 "fit" training prompts, the
# reward head and V_0, every choice inside them on an inner split) and the search strength chosen on held-out
# training prompts in ../strength-task1 (the default, diversity-first top-W with W = K = 4, L = 16). The eval prompts
# are used by no fit and no choice. Frontier: 64 samples a prompt for best-of-N at N = 1..64 (subset estimator),
# SPI-1 at three beam budgets.
#
# It takes longer than one working session on 2 CPU cores (round 0 ~30 min, the evaluations ~3 h), so it resumes:
# `spi run` picks up every method batch by batch from its eval-*.jsonl, and
# `.venv/bin/python results/snapshot.py save t1e results/frontier-task1-eval200` packs the run folder (without round
# 0's prefix states, which no later step reads, nor prompt texts) into snapshot/ to be committed; it is loaded back
# into runs/t1e below on a machine without it.
set -euo pipefail
cd "$(dirname "$0")/../.."
source results/vllm-cpu.sh  # sets $V, the engine settings
S="name=t1e data.prompts=default data.split=eval data.limit=200 frontier.enabled=true"
F="frontier.budgets=[[4,4,16],[2,4,16],[2,2,16]]"
export OMP_NUM_THREADS=2
[ -s runs/task1-prompts/fit.jsonl ] || .venv/bin/python results/task1-round0/make_prompts.py runs/task1-prompts
[ -d runs/t1e ] || .venv/bin/python results/snapshot.py load t1e results/frontier-task1-eval200
.venv/bin/spi run results/task1-round0/config.yaml $S $F $V
mkdir -p results/frontier-task1-eval200
cp runs/t1e/{report.md,results.json,frontier.json,frontier.png,config.yaml,reward_model.json} results/frontier-task1-eval200/
