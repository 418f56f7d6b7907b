#!/usr/bin/env bash
# Issue 23, item 3: the paper's value recipe on task 1's real data. V_0 as a separate value model started from the
# run's reward model (spi.value_backbone=reward: the policy's backbone with the reward head trained by reward: train,
# its top 2 layers and head fine-tuned by eq. 12 on round 0's 3,601 tree rollouts of the 459 "fit" prompts), beside
# the anchored heads of ../frontier-task1-eval200 (same round 0, same reward model). Both report their held-out
# within-prompt Spearman with the reward and with the judge at each prefix length (values/round-0.json); SPI-1
# guided by the value model is then evaluated on the 200 eval prompts against the same sample and best-of-16
# (reused). Ran 2026-12-06 in 1 h 45 min on 2 CPU cores (round 0's end states 12 min, the two value-model trainings
# 55 min, SPI-1 23 min; see README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
S="name=t1m data.prompts=default data.split=eval data.limit=200 spi.value=model spi.value_backbone=reward"
source results/task1-eval200.sh  # $V, two threads, task 1's prompt split
if [ ! -d runs/t1m ]; then
  [ -d runs/t1e ] || .venv/bin/python results/snapshot.py load t1e results/frontier-task1-eval200
  mkdir -p runs/t1m
  cp -r runs/t1e/{config.yaml,rollouts-0.jsonl,rollouts-0.cost.json,reward_model,reward_model.json,reward_model.cost.json} runs/t1m/
  cp runs/t1e/eval-sample.* runs/t1e/eval-bon-16.* runs/t1m/
  .venv/bin/python results/set_config.py runs/t1m/config.yaml --drop frontier $S
fi
.venv/bin/spi run results/task1-round0/config.yaml $S $V
mkdir -p results/value-model-task1/values
cp runs/t1m/{report.md,results.json,config.yaml,evaluator_by_round.png} results/value-model-task1/
cp runs/t1m/values/round-0.json results/value-model-task1/values/
