#!/usr/bin/env bash
# Reproduces this folder's run (about 37 minutes on 2 idle CPU cores: round-0 rollouts 3, V_0 3, round-1
# rollouts 6, V_1 4, evaluation of 100 prompts 21), then copies its report here.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/spi run results/quality-sentiment/config.yaml
cp runs/quality-sentiment/{report.md,results.json,evaluator_by_round.png} results/quality-sentiment/
cp -r runs/quality-sentiment/values results/quality-sentiment/
