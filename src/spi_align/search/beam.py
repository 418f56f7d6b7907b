"""Algorithm 2: chunk-level beam search guided by Σ_i γ V_i/β_i, diversity-first, final pick by the reward.

Naming: W beams kept (parents), K successors per parent, L tokens per chunk; W·K candidates per step. The
first step samples W·K chunks from the prompt. Finished candidates leave the beam before the guidance is computed
(their rows and KV cache are dropped) and stay in the pool; the reward model picks the answer among everything
that finished (or reached max_new_tokens). All prompts of a batch are searched together and the policy's KV
cache follows the selected parents, so no prefix is encoded twice.

Diversity-first clusters a prompt's candidates by a key and lets every cluster place its best candidate before any
places a second: the paper keys by the whole response (only exact duplicates cluster), 'diversity-parent' by the
parent each candidate continues.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Literal

import torch

from spi_align.config import SPIConfig
from spi_align.core.interfaces import Policy, Scorer
from spi_align.core.records import Candidate, Cost, Prompt, SearchResult
from spi_align.core.rows import GenerationSettings, Rows
from spi_align.search.candidates import pick_best, rows_to_candidates, score_candidates, score_from_rows
from spi_align.search.selection import diversity_first, softmax_sample, top_w

Selection = Literal["diversity", "diversity-parent", "top", "softmax"]
ValueFn = Callable[[Rows], torch.Tensor]
"""Maps rows to one guidance value each (e.g. `HeadStack` applied to `rows.hidden`)."""


class ChunkBeamSearch:
    """Value-guided chunk beam search (the improved policy π_k of eq. 13/14)."""

    def __init__(
        self,
        policy: Policy,
        value: ValueFn | None,
        reward: Scorer,
        width: int = 4,
        successors: int = 4,
        chunk: int = 16,
        selection: Selection = "diversity",
        temperature: float = 1.0,
        base_logprob: bool = False,
        name: str | None = None,
    ) -> None:
        self.policy, self.value, self.reward = policy, value, reward
        self.width, self.successors, self.chunk = width, successors, chunk
        self.selection, self.temperature, self.base_logprob = selection, temperature, base_logprob
        self.name = name or f"beam-w{width}k{successors}l{chunk}"

    @classmethod
    def from_config(
        cls, policy: Policy, value: ValueFn | None, reward: Scorer, spi: SPIConfig, name: str
    ) -> ChunkBeamSearch:
        """The search an `spi` config section describes (W, K, L, selection, temperature, log π_base)."""
        return cls(
            policy,
            value,
            reward,
            spi.width,
            spi.successors,
            spi.chunk,
            spi.selection,
            spi.temperature,
            spi.base_logprob,
            name=name,
        )

    def guidance(self, rows: Rows) -> torch.Tensor:
        """Ranking score of each row: Σ_i γ V_i/β_i, plus log π_base (eq. 14) when asked."""
        score = self.value(rows) if self.value is not None else torch.zeros(rows.size, device=rows.length.device)
        return score + rows.logprob if self.base_logprob else score

    def keys(self, tokens: torch.Tensor, parent: torch.Tensor) -> list[Hashable]:
        """Diversity-first's cluster of each candidate: its parent ('diversity-parent'), else its whole response."""
        if self.selection == "diversity-parent":
            return parent.tolist()
        return [tuple(t) for t in tokens.tolist()]

    def choose(self, values: torch.Tensor, keys: Sequence[Hashable]) -> list[int]:
        if self.selection in ("diversity", "diversity-parent"):
            return diversity_first(values, keys, self.width)
        if self.selection == "top":
            return top_w(values, self.width)
        return softmax_sample(values, self.width, self.temperature, self.policy.choice_generator)  # values on CPU

    def run(self, prompts: Sequence[Prompt], cost: Cost, gen: GenerationSettings | None = None) -> list[SearchResult]:
        policy = self.policy
        rows = policy.start(prompts, cost, gen)
        first = torch.arange(len(prompts), device=policy.device).repeat_interleave(self.width * self.successors)
        rows = policy.extend(rows.select(first), self.chunk, cost)
        parent = torch.zeros(rows.size, dtype=torch.long)  # the slot of each row's parent (first step: the prompt)
        pool: list[tuple[int, Candidate]] = []
        unscored: list[tuple[int, Candidate]] = []
        while True:
            ended = rows.done | (rows.length >= rows.max_new_tokens)
            if bool(ended.any()):
                part = rows_to_candidates(policy, rows, ended)
                if not score_from_rows(self.reward, rows, ended, part, cost):
                    unscored += part
                pool += part
                live = (~ended).nonzero().squeeze(1)
                if live.numel() == 0:
                    break
                rows, parent = rows.select(live), parent[live.cpu()]  # finished rows leave: no guidance, no cache
            with cost.timer("value"):
                values = self.guidance(rows).float().cpu()
            cost.value_calls += rows.size
            tokens = rows.response.cpu()
            prompt_of = rows.prompt_index.cpu()
            parents: list[int] = []
            for p in prompt_of.unique().tolist():
                members = (prompt_of == p).nonzero().squeeze(1)
                keys = self.keys(tokens[members], parent[members])
                parents += members[self.choose(values[members], keys)].tolist()
            index = torch.tensor(parents, device=policy.device).repeat_interleave(self.successors)
            rows = policy.extend(rows.select(index), self.chunk, cost)
            parent = torch.arange(len(parents)).repeat_interleave(self.successors)
        score_candidates(self.reward, prompts, unscored, cost)
        return pick_best(prompts, pool)
