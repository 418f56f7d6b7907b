"""Algorithm 2: chunk-level beam search guided by Σ_i γ V_i/β_i, diversity-first, final pick by the reward.

Naming: W beams kept (parents), K successors per parent, L tokens per chunk; W·K candidates per step. The
first step samples W·K chunks from the prompt. Finished candidates leave the beam before the guidance is computed
(their rows and KV cache are dropped) and stay in the pool; the reward model picks the answer among everything
that finished (or reached max_new_tokens). All prompts of a batch are searched together and the policy's KV
cache follows the selected parents, so no prefix is encoded twice.

Diversity-first clusters a prompt's candidates by a key and lets every cluster place its best candidate before any
places a second: the paper keys by the whole response (only exact duplicates cluster), 'diversity-parent' by the
parent each candidate continues.

With `trace` on (the default) the search records its tree per prompt (`search/trace.py`: every chunk, its guidance
and the named terms value functions report, kept or pruned, its cluster, how it ended, the reward of what ended) in
`SearchResult.trace`, from what it already holds: recording runs no forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Literal

import torch

from spi_align.config import SPIConfig
from spi_align.core.interfaces import Policy, Scorer
from spi_align.core.records import Candidate, Cost, Prompt, SearchResult, guidance_terms
from spi_align.core.rows import GenerationSettings, Rows
from spi_align.search.candidates import pick_best, rows_to_candidates, score_candidates, score_from_rows
from spi_align.search.selection import diversity_first, softmax_sample, top_w
from spi_align.search.trace import TreeTrace

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
        trace: bool = True,
    ) -> None:
        self.policy, self.value, self.reward = policy, value, reward
        self.width, self.successors, self.chunk = width, successors, chunk
        self.selection, self.temperature, self.base_logprob = selection, temperature, base_logprob
        self.name = name or f"beam-w{width}k{successors}l{chunk}"
        self.trace = trace
        """Record each prompt's tree in `SearchResult.trace` (no extra forward pass; `spi serve` turns it on per
        request)."""

    @classmethod
    def from_config(
        cls, policy: Policy, value: ValueFn | None, reward: Scorer, spi: SPIConfig, name: str, trace: bool = True
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
            trace=trace,
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
        trace = TreeTrace(len(prompts)) if self.trace else None
        rows = policy.start(prompts, cost, gen)
        first = torch.arange(len(prompts), device=policy.device).repeat_interleave(self.width * self.successors)
        rows = policy.extend(rows.select(first), self.chunk, cost)
        parent = torch.zeros(rows.size, dtype=torch.long)  # the slot of each row's parent (first step: the prompt)
        node = [-1] * rows.size  # each row's node in its prompt's trace (before `grow`: its parent's)
        pool: list[tuple[int, Candidate]] = []
        unscored: list[tuple[int, Candidate]] = []
        while True:
            tokens, prompt_of = rows.response.cpu(), rows.prompt_index.cpu()
            if trace is not None:
                node = trace.grow(prompt_of.tolist(), node, tokens, rows.length.tolist())
            ended = rows.done | (rows.length >= rows.max_new_tokens)
            if bool(ended.any()):
                part = rows_to_candidates(policy, rows, ended)
                if trace is not None:
                    out = ended.nonzero().squeeze(1).tolist()
                    trace.end([p for p, _ in part], [node[i] for i in out], [c.finished for _, c in part])
                if not score_from_rows(self.reward, rows, ended, part, cost):
                    unscored += part
                pool += part
                live = (~ended).nonzero().squeeze(1)
                if live.numel() == 0:
                    break
                rows, parent = rows.select(live), parent[live.cpu()]  # finished rows leave: no guidance, no cache
                tokens, prompt_of = tokens[live.cpu()], prompt_of[live.cpu()]
                node = [node[i] for i in live.tolist()]
            named: AbstractContextManager[dict[str, Any]] = guidance_terms() if trace is not None else nullcontext({})
            with cost.timer("value"), named as terms:  # value functions report their terms to a trace
                values = self.guidance(rows).float().cpu()
            cost.value_calls += rows.size
            if trace is not None:
                trace.rank(prompt_of.tolist(), node, values.tolist(), terms)
            parents: list[int] = []
            for p in prompt_of.unique().tolist():
                members = (prompt_of == p).nonzero().squeeze(1)
                keys = self.keys(tokens[members], parent[members])
                chosen = self.choose(values[members], keys)
                if trace is not None:
                    clustered = self.selection in ("diversity", "diversity-parent")
                    trace.select(p, [node[i] for i in members.tolist()], chosen, keys if clustered else None)
                parents += members[chosen].tolist()
            index = torch.tensor(parents, device=policy.device).repeat_interleave(self.successors)
            rows = policy.extend(rows.select(index), self.chunk, cost)
            parent = torch.arange(len(parents)).repeat_interleave(self.successors)
            node = [node[i] for i in parents for _ in range(self.successors)]
        score_candidates(self.reward, prompts, unscored, cost)
        results = pick_best(prompts, pool)
        if trace is not None:
            trace.attach(results, policy.tokenizer)
        return results
