"""The zero-shot baseline every learned value must beat: the reward applied to the partial response.

On the same held-out training prompts a value kind reports its ranking on, R_t = r(x, y_1..t) is computed for each
held-out rollout at each reported prefix length and ranked within its prompt against the final reward:

- a reward head on the policy's own states reads the state after the prefix closed with the end token
  (`prefix_states`, one pass for all lengths);
- any other scorer scores the decoded prefix text, one batched call per length.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from spi_align.core.interfaces import Scorer
from spi_align.core.records import Prompt
from spi_align.scoring.ranking import prompt_spearman
from spi_align.scoring.reward_model import head_values
from spi_align.scoring.row_reward import PolicyHeadReward


def partial_reward_spearman(
    policy: Any,
    reward: Scorer,
    prompts: Sequence[Prompt],
    tokens: Sequence[Sequence[int]],
    rewards: Sequence[float],
    prefixes: Sequence[int | None],
    labels: Sequence[float] | None = None,
) -> dict[str, float]:
    """`heldout_partial_reward_spearman_at_<t>` for each t in `prefixes` (None = the whole response: the reward
    itself), on the rollouts given (the caller passes the held-out prompts'), and
    `heldout_partial_reward_constant_prompts_at_<t>`: the prompts where R_t scored every rollout alike (e.g. a
    lexicon on a short prefix), counted as 0 in the mean (`prompt_spearman`). With `labels` (the judge's score of
    each rollout), also `heldout_partial_reward_judge_spearman_at_<t>`: R_t ranked against the judge."""
    groups = [p.id for p in prompts]
    lengths = [t for t in prefixes if t is not None]
    out: dict[str, float] = {}
    if isinstance(reward, PolicyHeadReward) and reward.from_rows:
        from spi_align.values.prefix_states import prefix_states

        states = prefix_states(policy, prompts, tokens, lengths)
        head = reward.model.head
        for t in prefixes:
            values = []
            for s in states:
                k = len(s.lengths) - 1 if t is None else max(i for i, n in enumerate(s.lengths) if n <= t)
                with torch.no_grad():
                    values.append(float(head_values(head, s.closed[k])))
            out.update(_entries(t, values, rewards, groups, labels))
        return out
    for t in prefixes:
        texts = policy.tokenizer.batch_decode([list(x)[:t] for x in tokens], skip_special_tokens=True)
        values = reward.score(list(prompts), texts)
        out.update(_entries(t, values, rewards, groups, labels))
    return out


def _entries(
    t: int | None,
    values: Sequence[float],
    rewards: Sequence[float],
    groups: Sequence[str],
    labels: Sequence[float] | None,
) -> dict[str, float]:
    at = f"at_{t or 'end'}"
    ranked = prompt_spearman(values, rewards, groups)
    out = {
        f"heldout_partial_reward_spearman_{at}": ranked.mean,
        f"heldout_partial_reward_constant_prompts_{at}": ranked.constant,
    }
    if labels is not None:
        out[f"heldout_partial_reward_judge_spearman_{at}"] = prompt_spearman(values, labels, groups).mean
    return out
