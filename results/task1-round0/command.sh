#!/usr/bin/env bash
# Reproduces results/task1-round0 (issue 19's re-measurement): about 2 h 30 min on 2 CPU cores (tree rollouts of
# 459 prompts, prefix states ~15 min, evaluation of 128 select prompts: sample, BoN-16, SPI-1 per diversity key).
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/python results/task1-round0/make_prompts.py runs/task1-prompts
.venv/bin/spi run results/task1-round0/config.yaml
# The same search keyed by parent: round 0, the reward model, V_0, sample and BoN-16 are shared, only SPI-1 reruns.
rm -rf runs/task1-round0-parent && cp -r runs/task1-round0 runs/task1-round0-parent
rm -f runs/task1-round0-parent/eval-spi-1.* runs/task1-round0-parent/report.md runs/task1-round0-parent/results.json
sed -i 's/^  selection: diversity$/  selection: diversity-parent/; s/^name: task1-round0$/name: task1-round0-parent/' \
  runs/task1-round0-parent/config.yaml
.venv/bin/spi run results/task1-round0/config.yaml name=task1-round0-parent spi.selection=diversity-parent
.venv/bin/python results/task1-round0/paired.py runs/task1-round0 runs/task1-round0-parent > results/task1-round0/diversity_keys.md
cp runs/task1-round0/{report.md,results.json,reward_model.json,evaluator_by_round.png} results/task1-round0/
cp -r runs/task1-round0/values results/task1-round0/
