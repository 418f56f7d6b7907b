"""Turning policy rows into per-prompt candidates and picking the best by a scorer."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spi_align.core.interfaces import Policy, Scorer
from spi_align.core.records import Candidate, Cost, Prompt, SearchResult
from spi_align.core.rows import Rows
from spi_align.scoring.finite import finite_scores


def rows_to_candidates(policy: Policy, rows: Rows, keep: torch.Tensor | None = None) -> list[tuple[int, Candidate]]:
    """(prompt index, candidate) for every row (or the rows where `keep` is True), in row order."""
    index = torch.arange(rows.size) if keep is None else keep.nonzero().squeeze(1)
    index = index.to(rows.length.device)
    tokens = rows.token_lists(index)
    texts = policy.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    fields = zip(rows.prompt_index[index].tolist(), texts, tokens, rows.done[index].tolist(), strict=True)
    return [(p, Candidate(text=t, num_tokens=len(ids), finished=d, token_ids=ids)) for p, t, ids, d in fields]


def score_candidates(scorer: Scorer, prompts: Sequence[Prompt], pool: list[tuple[int, Candidate]], cost: Cost) -> None:
    """Fill each candidate's `score` with one batched scorer call (SpiError if a score is NaN or infinite)."""
    if not pool:
        return
    texts = [c.text for _, c in pool]
    with cost.timer("reward"):
        scores = finite_scores(scorer, scorer.score([prompts[i] for i, _ in pool], texts), texts)
    cost.reward_calls += len(pool)
    for (_, cand), score in zip(pool, scores, strict=True):
        cand.score = score


def score_from_rows(
    reward: Scorer, rows: Rows, keep: torch.Tensor | None, part: list[tuple[int, Candidate]], cost: Cost
) -> bool:
    """Score the candidates `part` (made from `rows` where `keep`) from the rows themselves when the reward can
    (`score_rows`, e.g. a reward model on the policy's own backbone); False when it cannot (score by text then).
    """
    score_rows = getattr(reward, "score_rows", None)
    if score_rows is None or not part:
        return False
    index = (torch.arange(rows.size) if keep is None else keep.nonzero().squeeze(1)).to(rows.length.device)
    with cost.timer("reward"):
        scores = score_rows(rows, index, cost)
    if scores is None:
        return False
    scores = finite_scores(reward, scores, [c.text for _, c in part])
    cost.reward_calls += len(part)
    for (_, cand), score in zip(part, scores, strict=True):
        cand.score = score
    return True


def pick_best(prompts: Sequence[Prompt], pool: list[tuple[int, Candidate]]) -> list[SearchResult]:
    """Per prompt, the highest-scoring candidate (the first on ties; the first if unscored)."""
    grouped: list[list[Candidate]] = [[] for _ in prompts]
    for i, cand in pool:
        grouped[i].append(cand)
    results = []
    for prompt, cands in zip(prompts, grouped, strict=True):
        best = max(cands, key=lambda c: float("-inf") if c.score is None else c.score)
        results.append(SearchResult(prompt=prompt, chosen=best, candidates=cands))
    return results
