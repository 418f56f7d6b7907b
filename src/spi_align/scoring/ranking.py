"""Within one prompt: how a predictor ranks each prompt's responses, and the per-prompt pieces the learners share.

Only differences between the candidates of one prompt matter to a search, so a value function, a partial reward or
a reward model is judged by how it orders each prompt's candidates, averaged over prompts (`prompt_spearman`); and
the learners work within a group too (a group: one prompt's rows, or one prompt's rows at one prefix length):
`group_rows` (each group's row indices), `centred` (each row minus its group's mean) and `differing_pairs` (every
two rows of a group whose targets differ, better first), used by the reward model's preference pairs and by the
anchored value's residual and ranking loss.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch
from scipy.stats import rankdata


def group_rows(keys: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    """The row indices of each key, ascending; keys in the order they first appear."""
    rows: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        rows.setdefault(key, []).append(i)
    return rows


def centred(values: torch.Tensor, keys: Sequence[Hashable]) -> torch.Tensor:
    """`values` (n,) or (n, d) minus the mean of its key's members."""
    ids = {k: j for j, k in enumerate(dict.fromkeys(keys))}
    gid = torch.tensor([ids[k] for k in keys])
    sums = torch.zeros(len(ids), *values.shape[1:]).index_add_(0, gid, values)
    counts = torch.zeros(len(ids)).index_add_(0, gid, torch.ones(len(values)))
    return values - (sums / counts.reshape(-1, *[1] * (values.dim() - 1)))[gid]


def differing_pairs(keys: Sequence[Hashable], values: Sequence[float]) -> list[list[tuple[int, int]]]:
    """For each key (`group_rows` order), its pairs of rows i < j whose values differ, by i then j, each written
    (better, worse); equal values (or NaN) make no pair."""
    out = []
    for members in group_rows(keys).values():
        pairs = []
        for a, i in enumerate(members):
            for j in members[a + 1 :]:
                if values[i] > values[j]:
                    pairs.append((i, j))
                elif values[j] > values[i]:
                    pairs.append((j, i))
        out.append(pairs)
    return out


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
    p, r = torch.tensor(predicted, dtype=torch.float64), torch.tensor(rewards, dtype=torch.float64)
    corrs, constant = [], 0
    for members in group_rows(groups).values():
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


def agreement(predicted: Sequence[float], labels: Sequence[float], groups: Sequence[Hashable]) -> dict[str, float]:
    """How a reward orders each prompt's samples against the labeller: pair accuracy over every two samples of one
    prompt whose labels differ (`differing_pairs`; the reward ranks the better one higher: 1, a tie: ½, the other
    way: 0) and the within-prompt Spearman (`prompt_spearman`), with the pair and prompt counts behind them."""
    pairs = [pair for group in differing_pairs(groups, labels) for pair in group]
    hits = [1.0 if predicted[a] > predicted[b] else 0.5 if predicted[a] == predicted[b] else 0.0 for a, b in pairs]
    ranked = prompt_spearman(predicted, labels, groups)
    return {
        "accuracy": sum(hits) / len(hits) if hits else float("nan"),
        "pairs": len(hits),
        "spearman": ranked.mean,
        "ranked_prompts": ranked.prompts,
        "constant_prompts": ranked.constant,
    }
