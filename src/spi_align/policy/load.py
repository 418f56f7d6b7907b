"""Loading the frozen policy on the backend `policy.backend` names: transformers ('hf') or vLLM ('vllm')."""

from __future__ import annotations

from spi_align.config import GenerationConfig, PolicyConfig
from spi_align.core.interfaces import Policy


def load_policy(cfg: PolicyConfig, gen: GenerationConfig, seed: int = 0) -> Policy:
    """Load the frozen policy named by `cfg.model` ('default', a local directory, or a hub id) on `cfg.backend`."""
    if cfg.backend == "vllm":
        from spi_align.policy.vllm import load_vllm_policy

        return load_vllm_policy(cfg, gen, seed)
    from spi_align.policy.hf import load_hf_policy

    return load_hf_policy(cfg, gen, seed)
