"""How well a predictor ranks each prompt's responses: the within-prompt Spearman correlation with their rewards.

Only differences between the candidates of one prompt matter to a search, so a value function, a partial reward or
a reward model is judged by how it orders each prompt's candidates, averaged over prompts (`prompt_spearman`).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from scipy.stats import rankdata


@dataclass(frozen=True)
class PromptSpearman:
    """Within-prompt Spearman correlations averaged over prompts, with the prompts the average is over."""

    mean: float
    """Mean over `prompts` of each prompt's Spearman correlation (NaN when there is none)."""
    prompts: int
    """Prompts averaged: those with ≥ min_size rollouts whose rewards are not all equal. Which they are depends only
    on the rewards, so every predictor compared on the same rollouts is averaged over the same prompts."""
    constant: int
    """Of `prompts`, those whose predictions are all equal: they rank nothing, and count as 0."""


def prompt_spearman(
    predicted: Sequence[float], rewards: Sequence[float], groups: Sequence[Hashable], min_size: int = 3
) -> PromptSpearman:
    """Mean over prompts (with ≥ min_size rollouts) of the Spearman correlation of predicted value and reward.

    Tied values share their average rank (as Spearman's rho defines it), never an arbitrary order. A prompt whose
    rewards are all equal carries no ranking to recover and is left out; a prompt whose predictions are all equal
    (while its rewards differ) ranks nothing and counts as 0, so a predictor that cannot tell a prompt's candidates
    apart is not averaged over fewer, easier prompts than another."""
    by_group: dict[Hashable, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    p, r = torch.tensor(predicted, dtype=torch.float64), torch.tensor(rewards, dtype=torch.float64)
    corrs, constant = [], 0
    for members in by_group.values():
        if len(members) < min_size:
            continue
        b = torch.from_numpy(rankdata(r[members].numpy()))
        b = b - b.mean()
        if b.norm().item() == 0:
            continue
        a = torch.from_numpy(rankdata(p[members].numpy()))
        a = a - a.mean()
        if a.norm().item() == 0:
            constant += 1
            corrs.append(0.0)
        else:
            corrs.append((a @ b).item() / (a.norm() * b.norm()).item())
    mean = float(sum(corrs) / len(corrs)) if corrs else float("nan")
    return PromptSpearman(mean, len(corrs), constant)


def within_prompt_spearman(
    predicted: Sequence[float], rewards: Sequence[float], groups: Sequence[Hashable], min_size: int = 3
) -> float:
    """`prompt_spearman`'s mean: prompts with constant rewards left out, with constant predictions counted as 0."""
    return prompt_spearman(predicted, rewards, groups, min_size).mean
