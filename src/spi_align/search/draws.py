"""Independent draws of a stochastic search, pooled per prompt: how π_k (k ≥ 1) is rolled out with `spi.draws`.

eq. 13's improved policy is a distribution, π_k(a | s) ∝ π_base(a | s) · exp(Σ_i γ V_i(s, a)/β_i). The chunk search
approximates it one step at a time by sampling-importance-resampling: K chunks drawn from π_base, one kept with
probability softmax(guidance / T) (a one-beam `ChunkBeamSearch` with 'softmax' selection). `RepeatedDraws` runs
`draws` such searches per prompt, all prompts' copies in one batch, and returns one result per prompt whose
candidates are every candidate any of its draws finished, and whose chosen response is the best of them by the
reward. A draw's finished candidates are not all draws of π_k: a sibling that ends leaves before the softmax weighs
it, and the K siblings of the last chunk are all kept (their chunk is a plain sample from the spine). Different
draws part from the first chunk on, where the beam search as evaluated keeps W parents picked as the top by the
guidance, so its candidates share their first chunks and V_k fitted on them sees little within-prompt spread.
Either way one prompt gets about one ranked prefix per draw (or beam) at each decision length.
"""

from __future__ import annotations

from collections.abc import Sequence

from spi_align.core.errors import SpiError
from spi_align.core.interfaces import Search
from spi_align.core.records import Cost, Prompt, SearchResult
from spi_align.core.rows import GenerationSettings
from spi_align.search.candidates import pick_best


class RepeatedDraws:
    """`draws` independent runs of `search` per prompt (in one batch), their candidates pooled per prompt."""

    def __init__(self, search: Search, draws: int, name: str | None = None) -> None:
        if draws < 1:
            raise SpiError(f"draws must be at least 1, got {draws}")
        self.search, self.draws = search, draws
        self.name = name or f"{search.name}-draws{draws}"

    def run(self, prompts: Sequence[Prompt], cost: Cost, gen: GenerationSettings | None = None) -> list[SearchResult]:
        copies = [p for p in prompts for _ in range(self.draws)]
        results = self.search.run(copies, cost, gen)
        pool = [(i // self.draws, c) for i, r in enumerate(results) for c in r.candidates]
        return pick_best(prompts, pool)
