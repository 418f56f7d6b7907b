"""Weak-to-strong search (Zhou et al. 2024) and BoN-I: the implicit reward of a small tuned/reference pair guides.

Weak-to-strong search is chunk beam search (W beams, K successors, L tokens a chunk) over a policy that may be
larger than the pair or use another tokenizer; candidates are ranked by the pair's implicit reward of the partial
response, and the implicit reward of the finished responses picks the answer.

When the pair reads the policy's tokens the same way (`same_tokenizer`: equal vocabularies and equal encodings of
probe texts, compared for real, not a tokenizer with itself) the policy's token ids are scored directly on the
pair's own KV caches (`CachedImplicitGuide`). Otherwise each partial response is decoded to text and
re-tokenised by the pair, the whole prefix every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from spi_align.interfaces import Cost, Prompt, SearchResult
from spi_align.policy import HFPolicy, Rows
from spi_align.scoring.implicit import ImplicitReward
from spi_align.search.beam import ChunkBeamSearch, Selection, ValueFn
from spi_align.search.best_of_n import BestOfN
from spi_align.search.implicit_guide import CachedImplicitGuide

PROBES = (
    "Hello, world! It's 2024-05-01; 3.14 × 2 = 6.28.",
    "  The quick brown fox\n\tjumps over 42 lazy dogs...",
    "naïve café, Straße, 東京, привет, 🙂",
    "def f(x):\n    return x ** 2  # <|im_end|> </s> <eos>",
)
"""Texts both tokenizers must encode identically (with equal vocabularies) to count as the same tokenizer."""


def same_tokenizer(a: Any, b: Any) -> bool:
    """True when token ids mean the same thing to both: same vocabulary and same encodings of `PROBES`."""
    if a is b:
        return True
    if len(a) != len(b) or a.get_vocab() != b.get_vocab():
        return False
    return all(
        list(a(t, add_special_tokens=False)["input_ids"]) == list(b(t, add_special_tokens=False)["input_ids"])
        for t in PROBES
    )


class TextImplicitGuide:
    """A chunk-search value for a policy with another tokenizer: decode each partial response, re-tokenise it."""

    def __init__(self, policy: HFPolicy, reward: ImplicitReward, prompts: Sequence[Prompt]) -> None:
        self.policy, self.reward, self.prompts = policy, reward, list(prompts)

    def __call__(self, rows: Rows) -> torch.Tensor:
        texts = self.policy.texts(rows)
        prompts = [self.prompts[i] for i in rows.prompt_index.tolist()]
        return torch.tensor(self.reward.score_prefixes(prompts, texts), device=rows.length.device)


class WeakToStrongSearch:
    """Chunk beam search guided by the implicit reward of partial responses; the implicit reward picks."""

    def __init__(
        self,
        policy: HFPolicy,
        reward: ImplicitReward,
        width: int = 4,
        successors: int = 4,
        chunk: int = 16,
        selection: Selection = "top",
        temperature: float = 1.0,
        name: str | None = None,
    ) -> None:
        self.policy, self.reward = policy, reward
        self.width, self.successors, self.chunk = width, successors, chunk
        self.selection, self.temperature = selection, temperature
        self.shared_tokens = same_tokenizer(policy.tokenizer, reward.tokenizer)
        """Whether the pair scores the policy's token ids directly (on its own KV caches)."""
        self.name = name or f"w2s-w{width}k{successors}l{chunk}"

    def guide(self, prompts: Sequence[Prompt]) -> ValueFn:
        """The value function of one batch of prompts."""
        if self.shared_tokens:
            return CachedImplicitGuide(self.reward, prompts)
        return TextImplicitGuide(self.policy, self.reward, prompts)

    def run(self, prompts: Sequence[Prompt], cost: Cost) -> list[SearchResult]:
        beam = ChunkBeamSearch(
            self.policy,
            self.guide(prompts),
            self.reward,
            self.width,
            self.successors,
            self.chunk,
            self.selection,
            self.temperature,
            name=self.name,
        )
        return beam.run(prompts, cost)


def implicit_best_of_n(policy: HFPolicy, reward: ImplicitReward, n: int) -> BestOfN:
    """BoN-I: N samples per prompt, the implicit reward of the finished responses picks."""
    return BestOfN(policy, reward, n, name=f"bon-i-{n}")
