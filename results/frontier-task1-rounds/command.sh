#!/usr/bin/env bash
# Issue 23, items 1 and 4 together: task 1's compute frontier with SPI-1, SPI-2 and SPI-3 on it, paired. A copy of
# ../quality-task1-rounds' finished run (runs/t1r: round 0 to V_2, sample, best-of-16, SPI-1..3 at W = K = 4, L = 16
# on the 200 eval prompts) gains best-of-64 on the same prompts, judged candidate by candidate, so that best-of-N at
# every N (the unbiased subset estimate) and SPI-k with its training cost spread over the queries served are read on
# one sample set; ../frontier-task1-eval200's best-of-64 came from another round 0. Only best-of-64 is new (about
# 50 min on 2 CPU cores: 48 there, judging 2); SPI-k reuses t1r's outputs and recorded costs. Not run yet.
# Resumes where it stopped; `.venv/bin/python results/snapshot.py save t1f results/frontier-task1-rounds` packs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
S="name=t1f data.prompts=default data.split=eval data.limit=200 spi.rounds=3 frontier.enabled=true"
F="frontier.budgets=[[4,4,16]]"
source results/task1-eval200.sh  # $V, two threads, task 1's prompt split
[ -d runs/t1f ] || [ ! -f results/frontier-task1-rounds/snapshot/run.tar.xz ] \
  || .venv/bin/python results/snapshot.py load t1f results/frontier-task1-rounds
if [ ! -d runs/t1f ]; then
  [ -d runs/t1r ] || .venv/bin/python results/snapshot.py load t1r results/quality-task1-rounds
  rm -rf runs/t1f.part  # copied whole or not at all: a half copy would be taken for the run and refill its gaps
  cp -r runs/t1r runs/t1f.part
  rm -f runs/t1f.part/report.md runs/t1f.part/results.json runs/t1f.part/*.png
  # the copy's saved config says what this command sets (a run folder refuses a command with other settings)
  .venv/bin/python results/set_config.py runs/t1f.part/config.yaml $S "$F"
  mv runs/t1f.part runs/t1f
fi
.venv/bin/spi run results/task1-round0/config.yaml $S "$F" $V
cp runs/t1f/{report.md,results.json,frontier.json,config.yaml} runs/t1f/*.png results/frontier-task1-rounds/
.venv/bin/python results/frontier-task1-rounds/paired.py runs/t1f > results/frontier-task1-rounds/paired.md
