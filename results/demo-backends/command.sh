#!/usr/bin/env bash
# Reproduces results/demo-backends (issue 20, item 4): the whole demo (`spi demo`: round 0 of tree rollouts on 32
# training prompts, the shipped reward head, V_0 and V_1, then sample / BoN-16 / SPI-1 / SPI-2 on 16 eval prompts)
# on each backend, same config and prompts, one after the other on an otherwise idle machine; wall and CPU time
# from /usr/bin/time, per-stage seconds from each run's artefacts (compare.py). About 25 minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=2
OUT=results/demo-backends
rm -rf runs/demo-hf runs/demo-vllm
/usr/bin/time -f "%e %U %S" -o $OUT/time-hf.txt .venv/bin/spi demo name=demo-hf
/usr/bin/time -f "%e %U %S" -o $OUT/time-vllm.txt .venv/bin/spi demo name=demo-vllm policy.backend=vllm \
  policy.vllm.block_size=32 policy.vllm.kv_cache_memory_bytes=2147483648
.venv/bin/python $OUT/compare.py runs/demo-hf runs/demo-vllm > $OUT/compare.md
cp runs/demo-hf/report.md $OUT/report-hf.md
cp runs/demo-vllm/report.md $OUT/report-vllm.md
