#!/usr/bin/env bash
# Issue 23, items 1 and 4 together: task 1's compute frontier with SPI-1, SPI-2 and SPI-3 on it, paired. A copy of
# ../quality-task1-rounds' finished run (runs/t1r: round 0 to V_2, sample, best-of-16, SPI-1..3 at W = K = 4, L = 16
# on the 200 eval prompts) gains best-of-64 on the same prompts, judged candidate by candidate, so that best-of-N at
# every N (the unbiased subset estimate) and SPI-k with its training cost spread over the queries served are read on
# one sample set; ../frontier-task1-eval200's best-of-64 came from another round 0. Only best-of-64 is new (about
# 50 min on 2 CPU cores: 48 there, judging 2); SPI-k reuses t1r's outputs and recorded costs. Not run yet. Besides
# the powers of two, best-of-17 (or 18, if these samples run 0.5% shorter) and best-of-24 cost about what SPI-k costs
# per prompt in generated tokens (992-997 against best-of-N's ~59 N) and in forward tokens (3,086-3,102 against
# ~130 N; the ratios in ../frontier-task1-eval200).
# Resumes where it stopped; `.venv/bin/python results/snapshot.py save t1f results/frontier-task1-rounds` packs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
S="name=t1f data.prompts=default data.split=eval data.limit=200 spi.rounds=3 frontier.enabled=true"
F="frontier.budgets=[[4,4,16]] frontier.sizes=[1,2,4,8,16,17,18,24,32,64]"
source results/task1-eval200.sh  # $V, two threads, task 1's prompt split, fork_run
[ -d runs/t1f ] || [ ! -f results/frontier-task1-rounds/snapshot/run.tar.xz ] \
  || .venv/bin/python results/snapshot.py load t1f results/frontier-task1-rounds
fork_run t1f t1r results/quality-task1-rounds $S $F
.venv/bin/spi run results/task1-round0/config.yaml $S $F $V
cp runs/t1f/{report.md,results.json,frontier.json,config.yaml} runs/t1f/*.png results/frontier-task1-rounds/
.venv/bin/python results/frontier-task1-rounds/paired.py runs/t1f > results/frontier-task1-rounds/paired.md
