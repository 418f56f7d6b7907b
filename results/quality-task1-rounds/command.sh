#!/usr/bin/env bash
# Issue 23, item 4: SPI-2 and SPI-3 on task 1 at the 200 eval prompts. Starts from ../frontier-task1-eval200's
# finished run folder (runs/t1e: round 0, V_0, sample, BoN-16, SPI-1 and the frontier's best-of-64, all reused as
# they are) and trains rounds 1 and 2 on the same 459 "fit" training prompts (π_k's rollouts: the search's own
# finished candidates), then evaluates SPI-2 and SPI-3 at W = K = 4, L = 16 (the frontier's other budgets stay at
# SPI-1). Each round's value is also ranked against the judge on held-out training prompts (values/round-k.json).
# Not run yet: an estimate of 3-4 h on 2 CPU cores (per round: rollouts of 459 prompts by the search ~55 min, their
# prefix states and V_k ~20 min, SPI-k+1 on 200 prompts ~30 min); it resumes where it stopped, across sessions too:
# `.venv/bin/python results/snapshot.py save t1r results/quality-task1-rounds` packs runs/t1r (no prompt texts, no
# prefix states) into snapshot/ to be committed, and this command loads it back on a machine without runs/t1r.
set -euo pipefail
cd "$(dirname "$0")/../.."
source results/vllm-cpu.sh  # sets $V, the engine settings
S="name=t1r data.prompts=default data.split=eval data.limit=200 frontier.enabled=true frontier.rounds=[1]"
F="frontier.budgets=[[4,4,16],[2,4,16],[2,2,16]] spi.rounds=3"
export OMP_NUM_THREADS=2
[ -s runs/task1-prompts/fit.jsonl ] || .venv/bin/python results/task1-round0/make_prompts.py runs/task1-prompts
[ -d runs/t1r ] || .venv/bin/python results/snapshot.py load t1r results/quality-task1-rounds
if [ ! -d runs/t1r ]; then
  [ -d runs/t1e ] || .venv/bin/python results/snapshot.py load t1e results/frontier-task1-eval200
  cp -r runs/t1e runs/t1r
  rm -f runs/t1r/report.md runs/t1r/results.json runs/t1r/*.png runs/t1r/frontier.json runs/t1r/run.lock
  # the copy's saved config says what this command sets (a run folder refuses a command with other settings)
  .venv/bin/python results/set_config.py runs/t1r/config.yaml $S $F
fi
.venv/bin/spi run results/task1-round0/config.yaml $S $F $V
mkdir -p results/quality-task1-rounds/values
cp runs/t1r/{report.md,results.json,config.yaml} runs/t1r/*.png results/quality-task1-rounds/
cp runs/t1r/values/round-*.json results/quality-task1-rounds/values/
