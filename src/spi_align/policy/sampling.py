"""Turning next-token logits into tokens: temperature, top-k, top-p through transformers' logits warpers."""

from __future__ import annotations

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from spi_align.config import GenerationConfig


class TokenSampler:
    """Samples one token per row from logits; greedy when `do_sample` is off."""

    def __init__(self, gen: GenerationConfig) -> None:
        self.do_sample = gen.do_sample
        warpers = LogitsProcessorList()
        if gen.temperature != 1.0:
            warpers.append(TemperatureLogitsWarper(gen.temperature))
        if gen.top_k > 0:
            warpers.append(TopKLogitsWarper(gen.top_k))
        if gen.top_p < 1.0:
            warpers.append(TopPLogitsWarper(gen.top_p))
        self.warpers = warpers

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        if not self.do_sample:
            return logits.argmax(dim=-1)
        scores = self.warpers(None, logits.float())
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)
