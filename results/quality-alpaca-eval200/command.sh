#!/usr/bin/env bash
# Reproduces this folder's run: from scratch about 90 minutes on 2 idle CPU cores (rollouts 30, prefix states 20,
# evaluation of 200 prompts 40). Copying runs/quality-alpaca200 (results/quality-alpaca200/command.sh) to
# runs/quality-alpaca-eval200 with this config.yaml resumes it: only the last 152 prompts are evaluated.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/spi run results/quality-alpaca-eval200/config.yaml
cp runs/quality-alpaca-eval200/{report.md,results.json,reward_model.json,evaluator_by_round.png} results/quality-alpaca-eval200/
cp -r runs/quality-alpaca-eval200/values results/quality-alpaca-eval200/
