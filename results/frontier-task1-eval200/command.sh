#!/usr/bin/env bash
# Reproduces results/frontier-task1-eval200: task 1's compute frontier (issue 23) on the 200 AlpacaEval eval prompts,
# on the vLLM backend, with the round 0 of ../task1-round0 (tree rollouts of the 459 "fit" training prompts, the
# reward head and V_0, every choice inside them on an inner split) and the search strength chosen on held-out
# training prompts in ../strength-task1 (the default, diversity-first top-W with W = K = 4, L = 16). The eval prompts
# are used by no fit and no choice. Frontier: 64 samples a prompt for best-of-N at N = 1..64 (subset estimator),
# SPI-1 at three beam budgets.
#
# It takes longer than one working session on 2 CPU cores (round 0 ~30 min, the evaluations ~3 h), so it resumes:
# `spi run` picks up every method batch by batch from its eval-*.jsonl, and `snapshot.sh save` packs the run folder
# (everything but round 0's prefix states, which no later step reads) into snapshot/ to be committed;
# `snapshot.sh load` puts it back into runs/t1e on a fresh machine before this command is run again.
set -euo pipefail
cd "$(dirname "$0")/../.."
V="policy.backend=vllm policy.vllm.block_size=32 policy.vllm.kv_cache_memory_bytes=2147483648"
S="name=t1e data.prompts=default data.split=eval data.limit=200 frontier.enabled=true"
F="frontier.budgets=[[4,4,16],[2,4,16],[2,2,16]]"
export OMP_NUM_THREADS=2
[ -s runs/task1-prompts/fit.jsonl ] || .venv/bin/python results/task1-round0/make_prompts.py runs/task1-prompts
[ -d runs/t1e ] || bash results/frontier-task1-eval200/snapshot.sh load
.venv/bin/spi run results/task1-round0/config.yaml $S $F $V
mkdir -p results/frontier-task1-eval200
cp runs/t1e/{report.md,results.json,frontier.json,frontier.png,config.yaml,reward_model.json} results/frontier-task1-eval200/
