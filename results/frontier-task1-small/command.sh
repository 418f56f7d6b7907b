#!/usr/bin/env bash
# Issue 23, items 1 and 4 at a quarter of the budget: SPI-1, SPI-2 and SPI-3 at W = K = 2, L = 16 (between best-of-4's
# and best-of-5's generated tokens) beside W = K = 4, on a copy (runs/t1s) of ../quality-task1-rounds' finished run
# (runs/t1r: round 0 to V_2, sample, best-of-16, SPI-1..3 at W = K = 4, L = 16 on the 200 eval prompts), so each round
# is read at two budgets on one sample set and paired with every best-of-N of 64 new samples per prompt. The best-of-64
# is drawn again here: ../frontier-task1-rounds drew it from the same run, but its run folder was not packed before its
# session ended, so its outputs are committed and its samples are not. With the same seeds vLLM draws the same samples
# (this run's best-of-N means repeat that run's to 0.0001 at every N). Why this budget: of the three budgets ../frontier-task1-eval200 ran (all reported, none
# chosen), SPI-1 at W = K = 2 was the only point whose judge Δ against best-of-N of about its generated tokens had a 95%
# interval above 0 (against best-of-4: +0.019 [+0.005, +0.033]; against best-of-8, about its forward tokens: +0.011
# [−0.003, +0.025]). It was the best of three on these eval prompts, so it may regress here, and this run does not
# confirm it on new prompts (the 805 AlpacaEval prompts are all split already): it runs on the same prompts, round 0,
# reward model and V_0..V_2. What it adds is rounds 2 and 3 at that budget. Best-of-5 and best-of-7 are the cheapest
# that cost at least what SPI at W = K = 2 costs in generated tokens (about 246 against ~59 N) and in forward tokens
# (about 886 against ~130 N; the ratios in ../frontier-task1-eval200). 47 min on 2 CPU cores (12:19 to 13:06):
# three SPI evaluations at W = K = 2 with their judging 14 min, best-of-64 25 min and its judging 2, the rest
# re-judging the copied methods; W = K = 4 reuses t1r's outputs and recorded costs. Resumes where it stopped; `.venv/bin/python results/snapshot.py save t1s
# results/frontier-task1-small` packs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
S="name=t1s data.prompts=default data.split=eval data.limit=200 spi.rounds=3 frontier.enabled=true"
F="frontier.budgets=[[4,4,16],[2,2,16]] frontier.sizes=[1,2,4,5,7,8,16,17,18,24,32,64]"
source results/task1-eval200.sh  # $V, two threads, task 1's prompt split, fork_run
[ -d runs/t1s ] || [ ! -f results/frontier-task1-small/snapshot/run.tar.xz ] \
  || .venv/bin/python results/snapshot.py load t1s results/frontier-task1-small
fork_run t1s t1r results/quality-task1-rounds $S $F
.venv/bin/spi run results/task1-round0/config.yaml $S $F $V
cp runs/t1s/{report.md,results.json,frontier.json,config.yaml} runs/t1s/*.png results/frontier-task1-small/
.venv/bin/python results/frontier-task1-rounds/paired.py runs/t1s > results/frontier-task1-small/paired.md
