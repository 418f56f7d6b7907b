"""Weak-to-strong search (Zhou et al. 2024) and BoN-I: the implicit reward of a small tuned/reference pair guides.

Weak-to-strong search is chunk beam search (W beams, K successors, L tokens a chunk) over a policy that may be
larger than the pair or use another tokenizer; candidates are ranked by the pair's implicit reward of the partial
response, and the implicit reward of the finished responses picks the answer.

When the pair reads the policy's tokens the same way (`values.tokenizers.same_tokenizer`, compared for real, not a
tokenizer with itself) the policy's token ids are scored directly on the pair's own KV caches
(`CachedImplicitGuide`). Otherwise each partial response is decoded to text and re-tokenised by the pair, the
whole prefix every step (the prompts come from `rows.prompts`).

The beam search records its tree as every chunk search does (`trace`, `search/trace.py`), the guidance being the
pair's implicit reward of each partial response.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spi_align.core.interfaces import Policy
from spi_align.core.records import Cost, Prompt, SearchResult
from spi_align.core.rows import GenerationSettings, Rows
from spi_align.hf.tokenizers import same_tokenizer
from spi_align.scoring.implicit import ImplicitReward
from spi_align.search.beam import ChunkBeamSearch, Selection, ValueFn
from spi_align.search.best_of_n import BestOfN
from spi_align.search.implicit_guide import CachedImplicitGuide


class TextImplicitGuide:
    """A chunk-search value for a policy with another tokenizer: decode each partial response, re-tokenise it."""

    def __init__(self, policy: Policy, reward: ImplicitReward) -> None:
        self.policy, self.reward = policy, reward

    def __call__(self, rows: Rows) -> torch.Tensor:
        texts = self.policy.texts(rows)
        prompts = [rows.prompts[i] for i in rows.prompt_index.tolist()]
        return torch.tensor(self.reward.score_prefixes(prompts, texts), device=rows.length.device)


class WeakToStrongSearch:
    """Chunk beam search guided by the implicit reward of partial responses; the implicit reward picks."""

    def __init__(
        self,
        policy: Policy,
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
        self.guide: ValueFn = CachedImplicitGuide(reward) if self.shared_tokens else TextImplicitGuide(policy, reward)
        """Ranks partial responses: the implicit reward of the tokens so far."""
        self.beam = ChunkBeamSearch(
            policy, self.guide, reward, width, successors, chunk, selection, temperature, name=self.name
        )

    @property
    def trace(self) -> bool:
        """Whether the beam search records its tree (`ChunkBeamSearch.trace`)."""
        return self.beam.trace

    @trace.setter
    def trace(self, on: bool) -> None:
        self.beam.trace = on

    def run(self, prompts: Sequence[Prompt], cost: Cost, gen: GenerationSettings | None = None) -> list[SearchResult]:
        return self.beam.run(prompts, cost, gen)


def implicit_best_of_n(policy: Policy, reward: ImplicitReward, n: int) -> BestOfN:
    """BoN-I: N samples per prompt, the implicit reward of the finished responses picks."""
    return BestOfN(policy, reward, n, name=f"bon-i-{n}")
