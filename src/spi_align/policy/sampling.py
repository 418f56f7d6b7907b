"""Turning next-token logits into tokens: temperature, top-k, top-p, greedy.

With top-k on, sampling happens among the k most likely tokens only (topk → temperature → top-p within the k →
multinomial over k → gather): the same distribution as transformers' logits warpers over the whole vocabulary,
since every other token has probability zero there, without the vocabulary-wide softmax and multinomial (about a
tenth of a decode step at batch 16 with a 49k vocabulary). The warper path remains for top-k off (and as the
reference the tests compare against). Ties at the k-th logit are the one difference: the warpers keep every tied
token, this path keeps k of them.
"""

from __future__ import annotations

from typing import Any, cast

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from spi_align.core.rows import GenerationSettings


class TokenSampler:
    """Samples one token per row from logits; greedy when `do_sample` is off.

    `fast=False` forces the vocabulary-wide warper path (transformers' warpers, then one multinomial over the
    whole vocabulary); both paths are deterministic for a given generator state.
    """

    def __init__(self, gen: GenerationSettings, fast: bool = True) -> None:
        self.do_sample = gen.do_sample
        self.temperature = gen.temperature
        self.top_k = gen.top_k
        self.top_p = gen.top_p
        self.fast = fast and gen.top_k > 0
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
        if self.fast:
            return self._sample_top_k(logits, generator)
        # transformers annotates (LongTensor, FloatTensor); the warpers read no input ids
        scores = self.warpers(cast(torch.LongTensor, None), cast(torch.FloatTensor, logits.float()))
        probs = torch.softmax(scores, dim=-1)
        return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)

    def _sample_top_k(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        values, index = logits.float().topk(min(self.top_k, logits.shape[-1]), dim=-1)  # sorted, highest first
        if self.temperature != 1.0:
            values = values / self.temperature
        if self.top_p < 1.0:
            values = values.masked_fill(top_p_mask(values, self.top_p), float("-inf"))
        probs = torch.softmax(values, dim=-1)
        pick = torch.multinomial(probs, num_samples=1, generator=generator)
        return index.gather(-1, pick).squeeze(-1)


def top_p_mask(sorted_desc: torch.Tensor, top_p: float) -> torch.Tensor:
    """True where `TopPLogitsWarper` removes a token, for logits sorted highest first: walking up from the least
    likely, drop tokens while their cumulative probability stays ≤ 1 - top_p; the most likely is always kept."""
    ascending = sorted_desc.flip(-1)
    remove = ascending.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
    remove[..., -1] = False
    return remove.flip(-1)


def final_logit_softcap(model: Any) -> float | None:
    """A causal LM's final-logit soft cap (`final_logit_softcapping` of its text config, e.g. Gemma 2's), or None."""
    return getattr(model.config.get_text_config(), "final_logit_softcapping", None)


def output_logits(lm_head: torch.nn.Module, hidden: torch.Tensor, softcap: float | None) -> torch.Tensor:
    """The LM head's logits of hidden states in fp32, soft-capped to cap · tanh(logits / cap) when `softcap` is
    set: what the policy samples from and what the implicit reward's log-probabilities (`token_logprob`) read."""
    logits = lm_head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    return logits


def token_logprob(logits: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] per row, without writing the (R, V) log-softmax: logit minus log-sum-exp."""
    return logits.gather(1, token[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)
