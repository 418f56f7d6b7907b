# Sourced by the result commands that run on the vLLM backend on CPU: the engine settings they share, as spi run
# settings in $V. block_size 32 (vLLM's CPU attention takes 16 or 32; 32 recomputes less of a prompt's last block
# per row than it pages), and a 2 GiB KV cache (the 135M policy's 64 new tokens for 16 rows of 200 prompts fit in it
# on a 24 GiB machine beside the reward and judge).
V="policy.backend=vllm policy.vllm.block_size=32 policy.vllm.kv_cache_memory_bytes=2147483648"
