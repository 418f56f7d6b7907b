"""The reward model as a value of partial responses: each candidate is closed with the end-of-turn token and scored
by the reward head, as if it ended there (`spi.reward_guide`).

Works for a reward model that reads the policy's rows (`PolicyHeadReward.from_rows`: a head on the frozen policy's
own hidden states); then a score costs one one-token forward per chunk and no re-encoding.
"""

from __future__ import annotations

import torch

from spi_align.errors import SpiError
from spi_align.interfaces import Scorer
from spi_align.policy import Rows
from spi_align.scoring.row_reward import PolicyHeadReward
from spi_align.search.beam import ValueFn


class RewardPrefixValue:
    """`value(rows) -> (R,)`: the reward head on the state after each partial response + end-of-turn token."""

    def __init__(self, reward: Scorer) -> None:
        if not isinstance(reward, PolicyHeadReward) or not reward.from_rows:
            raise SpiError(
                "spi.reward_guide needs a reward model on the policy's own hidden states (reward: train with a "
                "policy whose rows it reads); set spi.reward_guide=0 for this reward"
            )
        self.reward = reward

    @torch.no_grad()
    def __call__(self, rows: Rows) -> torch.Tensor:
        hidden = self.reward.policy.peek_end_hidden(rows)
        head = self.reward.model.head
        return head(hidden.to(head.weight.dtype)).squeeze(-1).to(rows.hidden.dtype)


def with_reward_prefix(value: ValueFn, reward_value: RewardPrefixValue, weight: float) -> ValueFn:
    """value(rows) + weight · reward_value(rows)."""
    return lambda rows: value(rows) + weight * reward_value(rows)
