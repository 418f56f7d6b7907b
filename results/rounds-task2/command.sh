#!/usr/bin/env bash
# Task 2's rounds to SPI-3 (issue 23, item 4 on task 2: is the judge mean monotone, sample < BoN-16 < SPI-1 < SPI-2 <
# SPI-3?). VADER guides and picks, TextBlob judges (never seen by any method). The config of ../quality-sentiment-tree
# (48 new tokens, round 0 a [4, 2] tree on the first 128 training prompts, anchored values with α per length,
# W = K = 4, L = 16: the strength task 2's own training prompts keep, ../strength-task2) at the issue's 200 eval
# prompts, three rounds, on the vLLM backend. Nothing is chosen on eval prompts. About 1 h on 2 CPU cores; it resumes
# batch by batch, and across sessions: `.venv/bin/python results/snapshot.py save t2r results/rounds-task2` packs the
# run folder into snapshot/ (no prompt texts, no prefix states), and this command loads it back where it is missing.
set -euo pipefail
cd "$(dirname "$0")/../.."
source results/vllm-cpu.sh  # sets $V, the engine settings
export OMP_NUM_THREADS=2
[ -d runs/t2r ] || [ ! -f results/rounds-task2/snapshot/run.tar.xz ] || .venv/bin/python results/snapshot.py load t2r results/rounds-task2
.venv/bin/spi run results/quality-sentiment-tree/config.yaml name=t2r data.limit=200 spi.rounds=3 $V
cp runs/t2r/{report.md,results.json,config.yaml} runs/t2r/*.png results/rounds-task2/
cp -r runs/t2r/values results/rounds-task2/
