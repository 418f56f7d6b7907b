"""Tree rollouts for round 0: branch partial responses at chunk boundaries instead of sampling leaves apart.

With branching factors `branches` = [b_0, b_1, ...] and L tokens per chunk, every live row (not ended, shorter
than max_new_tokens) is repeated b_j times at boundary j·L and each copy sampled on by L tokens; after the last
branching every row is sampled to the end. A row that already ended (or is full) is kept once: its copies would
be identical leaves. Each prompt thus gets at most Π b_j leaves, returned as candidates, rows grouped by prompt.

Why: siblings share their prefix, so the value target of a prefix can be the mean reward of all the leaves below
it, which has lower variance than the reward of the single rollout that passes through it in independent
sampling. And shared prefixes are sampled once: with [4, 2], L = 16 and 64 new tokens, the tree samples
4·16 + 8·48 = 448 tokens for 8 leaves, where 8 independent samples take 8·64 = 512 (fewer still when rows end
early). The price is less diversity between siblings.

Only the `Policy` protocol is used (`start`, `Rows.select`, `extend`), as the beam search does, so this runs on
every backend (transformers keeps each prefix's KV cache; vLLM's prefix cache finds the shared blocks).

With `trace` on (the default) the tree is recorded per prompt in `SearchResult.trace` (`search/trace.py`): every
branch's chunk, which leaves ended how; nothing guides or scores here, so values and scores are None.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from spi_align.core.errors import SpiError
from spi_align.core.interfaces import Policy
from spi_align.core.records import Cost, Prompt, SearchResult
from spi_align.core.rows import GenerationSettings
from spi_align.search.candidates import pick_best, rows_to_candidates
from spi_align.search.trace import TreeTrace


def branch_index(ended: torch.Tensor, branches: int) -> torch.Tensor:
    """The `Rows.select` index that repeats every row `branches` times, except rows where `ended` (finished or
    full), which are kept once; order is kept, so rows stay grouped by prompt. E.g. ended = [F, T, F] with 2
    branches gives [0, 0, 1, 2, 2]."""
    repeats = torch.where(ended, 1, branches).to(device=ended.device, dtype=torch.long)
    return torch.arange(ended.shape[0], device=ended.device).repeat_interleave(repeats)


class TreeSampling:
    """Round-0 rollouts as a sampling tree: `branches[j]` continuations of each live row at chunk boundary j·L,
    every leaf sampled to the end and kept as a candidate (the first is the answer; none is scored here)."""

    def __init__(self, policy: Policy, branches: Sequence[int], chunk: int, trace: bool = True) -> None:
        branches = [int(b) for b in branches]
        if not branches:
            raise SpiError("tree rollouts need at least one branching factor (spi.tree is empty)")
        if any(b < 1 for b in branches):
            raise SpiError(f"tree rollouts need branching factors of at least 1, got {branches}")
        if chunk < 1:
            raise SpiError(f"tree rollouts need a chunk of at least 1 token, got {chunk}")
        self.policy = policy
        self.branches = branches
        self.chunk = chunk
        self.name = "tree-" + "x".join(str(b) for b in branches)
        self.trace = trace
        """Record each prompt's tree in `SearchResult.trace` (no extra forward pass)."""

    @property
    def leaves(self) -> int:
        """Most leaves per prompt (fewer when rows end before the last branching)."""
        return math.prod(self.branches)

    def run(self, prompts: Sequence[Prompt], cost: Cost, gen: GenerationSettings | None = None) -> list[SearchResult]:
        policy = self.policy
        trace = TreeTrace(len(prompts)) if self.trace else None
        rows = policy.start(prompts, cost, gen)
        node = [-1] * rows.size  # each row's node in its prompt's trace
        last = len(self.branches) - 1
        for j, b in enumerate(self.branches):
            ended = rows.done | (rows.length >= rows.max_new_tokens)
            index = branch_index(ended, b)
            if trace is not None and j > 0:
                live = (~ended).nonzero().squeeze(1).tolist()
                trace.keep(rows.prompt_index[live].tolist(), [node[i] for i in live])
            node = [node[i] for i in index.tolist()]
            rows = policy.extend(rows.select(index), self.chunk if j < last else rows.max_new_tokens, cost)
            if trace is not None:
                node = trace.grow(rows.prompt_index.tolist(), node, rows.response.cpu(), rows.length.tolist())
        pool = rows_to_candidates(policy, rows)
        results = pick_best(prompts, pool)
        if trace is not None:
            trace.end([p for p, _ in pool], node, [c.finished for _, c in pool])
            trace.attach(results, policy.tokenizer)
        return results
