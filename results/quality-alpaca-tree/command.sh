#!/usr/bin/env bash
# Reproduces this folder's run (about 80 minutes on 2 idle CPU cores): needs runs/quality-alpaca-eval200 from
# results/quality-alpaca-eval200/command.sh, whose reward model and sample / BoN-16 evaluations it reuses.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p runs/quality-alpaca-tree
cp -rn runs/quality-alpaca-eval200/{reward_model,reward_model.json,eval-sample.jsonl,eval-sample.cost.json,eval-bon-16.jsonl,eval-bon-16.cost.json} runs/quality-alpaca-tree/
.venv/bin/spi run results/quality-alpaca-tree/config.yaml
cp runs/quality-alpaca-tree/{report.md,results.json,evaluator_by_round.png} results/quality-alpaca-tree/
cp -r runs/quality-alpaca-tree/values results/quality-alpaca-tree/
# The lever ablation (ranking loss, α per length, tree rollouts) on runs/quality-alpaca200's held-out rollouts:
.venv/bin/python results/quality-alpaca200/ablation_levers.py runs/quality-alpaca200 runs/quality-alpaca-tree > /tmp/ablation_levers.md
mv /tmp/ablation_levers.md results/quality-alpaca200/ablation_levers.md
