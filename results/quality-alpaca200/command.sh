#!/usr/bin/env bash
# Reproduces this folder's run (about 60 minutes on 2 idle CPU cores: rollouts 30, prefix states 20, evaluation
# of 48 prompts 10), then copies its report here.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/spi run results/quality-alpaca200/config.yaml
cp runs/quality-alpaca200/{report.md,results.json,reward_model.json,evaluator_by_round.png} results/quality-alpaca200/
cp -r runs/quality-alpaca200/values results/quality-alpaca200/
# Value ablation on this run's round-0 data (minutes): features, anchoring, ridge. ablation_levers.md (ranking loss,
# α per length, tree rollouts) needs the tree run too: results/quality-alpaca-tree/command.sh writes it.
.venv/bin/python results/quality-alpaca200/ablation_values.py runs/quality-alpaca200 > /tmp/ablation_values.md
mv /tmp/ablation_values.md results/quality-alpaca200/ablation_values.md
# What a better reward model would read (a probe of the evaluator's labels on the saved states, minutes):
.venv/bin/python results/quality-alpaca200/ablation_reward_features.py runs/quality-alpaca200 > /tmp/ablation_reward_features.md
mv /tmp/ablation_reward_features.md results/quality-alpaca200/ablation_reward_features.md
