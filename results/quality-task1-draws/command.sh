#!/usr/bin/env bash
# Issue 23, item 4's follow-up: round 1 rolled out as independent draws of π_1 (spi.draws = 4, spi.draw_temperature
# = 1: eq. 13's π_1 with β = 1, nothing tuned), against ../quality-task1-rounds, where round 1 keeps the evaluated
# search's own candidates and V_1 does not rank them. Same round 0, V_0, sample and BoN-16 (../frontier-task1-eval200's
# snapshot, runs/t1e), same W = K = 4, L = 16 for SPI-1 and SPI-2 on the 200 eval prompts; SPI-1 does not depend on
# how round 1 is rolled out, so its outputs are taken from runs/t1r once that run has finished (results.json).
# Four draws of one beam and K = 4 successors sample the tokens of the W = K = 4 search and give about as many ranked
# prefixes per prompt (one per draw at each length); what differs is that the four spines are independent and drawn
# by softmax(guidance), where the beam's four parents are its top four. Hypothesis: V_1 then ranks its held-out
# candidates better than ../quality-task1-rounds' V_1 (0.07 / 0.02 / 0.00); it may not, and SPI-2 may not improve.
# Resumes where it stopped; `.venv/bin/python results/snapshot.py save t1d results/quality-task1-draws` packs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
S="name=t1d data.prompts=default data.split=eval data.limit=200 spi.rounds=2 spi.draws=4 spi.draw_temperature=1.0"
source results/task1-eval200.sh  # $V, two threads, task 1's prompt split, fork_run
[ -d runs/t1d ] || [ ! -f results/quality-task1-draws/snapshot/run.tar.xz ] \
  || .venv/bin/python results/snapshot.py load t1d results/quality-task1-draws
fork_run t1d t1e results/frontier-task1-eval200 --drop frontier $S
# SPI-1's outputs from t1r once it has finished; the cost file before the outputs (a resume keeps the records it finds)
if [ -f runs/t1r/results.json ] && [ ! -f runs/t1d/eval-spi-1.jsonl ]; then
  cp runs/t1r/eval-spi-1.cost.json runs/t1d/ && cp runs/t1r/eval-spi-1.jsonl runs/t1d/
fi
.venv/bin/spi run results/task1-round0/config.yaml $S $V
mkdir -p results/quality-task1-draws/values
cp runs/t1d/{report.md,results.json,config.yaml} runs/t1d/*.png results/quality-task1-draws/
cp runs/t1d/values/round-*.json results/quality-task1-draws/values/
