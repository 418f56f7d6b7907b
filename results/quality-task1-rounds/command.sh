#!/usr/bin/env bash
# Issue 23, item 4: SPI-2 and SPI-3 on task 1 at the 200 eval prompts. Starts from ../frontier-task1-eval200's
# snapshot (runs/t1e: round 0, V_0, sample and BoN-16, reused as they are), evaluates SPI-1, trains rounds 1 and 2
# on the same 459 "fit" training prompts (π_k's rollouts: the search's own finished candidates) and evaluates SPI-2
# and SPI-3, all at W = K = 4, L = 16 (no frontier: its best-of-64 and other budgets are in ../frontier-task1-eval200).
# Each round's value is also ranked against the judge on held-out training prompts (values/round-k.json).
# Ran 2026-12-06/07 on 2 CPU cores, vLLM, across three sessions: round 1's rollouts (the search's 8,471 finished
# candidates of the 459 prompts) 68 min wall, V_1 43, round 2's rollouts 84 min of stage time, V_2 39, SPI-1 27 wall,
# SPI-2 32 min of stage time, SPI-3 24 wall; finished, and the snapshot holds the finished run. It resumes where it
# stops, across sessions too:
# `.venv/bin/python results/snapshot.py save t1r results/quality-task1-rounds` packs runs/t1r (no prompt texts, no
# prefix states) into snapshot/ to be committed, and this command loads it back on a machine without runs/t1r.
set -euo pipefail
cd "$(dirname "$0")/../.."
S="name=t1r data.prompts=default data.split=eval data.limit=200 spi.rounds=3"
source results/task1-eval200.sh  # $V, two threads, task 1's prompt split, fork_run
[ -d runs/t1r ] || .venv/bin/python results/snapshot.py load t1r results/quality-task1-rounds
fork_run t1r t1e results/frontier-task1-eval200 --drop frontier $S
.venv/bin/spi run results/task1-round0/config.yaml $S $V
mkdir -p results/quality-task1-rounds/values
cp runs/t1r/{report.md,results.json,config.yaml} runs/t1r/*.png results/quality-task1-rounds/
cp runs/t1r/values/round-*.json results/quality-task1-rounds/values/
