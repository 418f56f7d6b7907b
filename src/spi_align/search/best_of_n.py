"""Plain sampling and best-of-N with an explicit reward (BoN-E)."""

from __future__ import annotations

from collections.abc import Sequence

from spi_align.core.interfaces import Policy, Scorer
from spi_align.core.records import Cost, Prompt, SearchResult
from spi_align.core.rows import GenerationSettings
from spi_align.search.candidates import pick_best, rows_to_candidates, score_candidates, score_from_rows


class PlainSampling:
    """Plain samples from the base policy (the first is the answer): the reference point every method must
    beat, and with n > 1 the rollouts of round 0."""

    def __init__(self, policy: Policy, n: int = 1) -> None:
        self.policy = policy
        self.n = n
        self.name = "sample" if n == 1 else f"sample-{n}"

    def run(self, prompts: Sequence[Prompt], cost: Cost, gen: GenerationSettings | None = None) -> list[SearchResult]:
        rows = self.policy.sample(prompts, self.n, cost, gen)
        return pick_best(prompts, rows_to_candidates(self.policy, rows))


class BestOfN:
    """N samples per prompt, all prompts of the batch decoded together; the reward picks one."""

    def __init__(self, policy: Policy, reward: Scorer, n: int, name: str | None = None) -> None:
        self.policy = policy
        self.reward = reward
        self.n = n
        self.name = name or f"bon-{n}"

    def run(self, prompts: Sequence[Prompt], cost: Cost, gen: GenerationSettings | None = None) -> list[SearchResult]:
        rows = self.policy.sample(prompts, self.n, cost, gen)
        pool = rows_to_candidates(self.policy, rows)
        if not score_from_rows(self.reward, rows, None, pool, cost):
            score_candidates(self.reward, prompts, pool, cost)
        return pick_best(prompts, pool)
