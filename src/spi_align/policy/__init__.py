"""Policies: a frozen causal LM that samples, continues partial responses by chunks, and exposes features.

Two backends implement `interfaces.Policy`: `HFPolicy` (transformers, hidden states exposed) and `VLLMPolicy`
(vLLM's offline engine, `policy/vllm.py`, imported only when asked for: vLLM is an optional extra).
"""

from spi_align.policy.hf import HFPolicy
from spi_align.policy.load import load_policy

__all__ = ["HFPolicy", "load_policy"]
