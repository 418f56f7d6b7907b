#!/usr/bin/env bash
# Reproduces this folder's run (about 30 minutes on 2 idle CPU cores); needs runs/quality-sentiment from
# results/quality-sentiment/command.sh, whose sample and BoN-16 evaluations it reuses.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p runs/quality-sentiment-tree
cp -n runs/quality-sentiment/{eval-sample.jsonl,eval-sample.cost.json,eval-bon-16.jsonl,eval-bon-16.cost.json} runs/quality-sentiment-tree/
.venv/bin/spi run results/quality-sentiment-tree/config.yaml
cp runs/quality-sentiment-tree/{report.md,results.json,evaluator_by_round.png} results/quality-sentiment-tree/
cp -r runs/quality-sentiment-tree/values results/quality-sentiment-tree/
