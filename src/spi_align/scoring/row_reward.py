"""A reward model that shares the policy's backbone scores finished rows from the policy's own hidden state.

The reward model reads the hidden state at the turn's end token of prompt + response; a policy row that ended
itself already holds exactly that state, and a row cut at max_new_tokens needs the end token fed once. So
best-of-N and the beam search pick without re-encoding any text. Used only when a probe shows the reward
model's text format and the policy's rows tokenise identically; otherwise scoring falls back to text.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spi_align.core.interfaces import HiddenStatePolicy
from spi_align.core.records import Cost, Prompt
from spi_align.core.rows import Rows
from spi_align.scoring.reward_model import RewardModel, RewardModelScorer, head_values

PROBE = (Prompt("probe", "Name a colour."), "Blue, like the sky.")


def same_token_layout(model: RewardModel, policy: HiddenStatePolicy) -> bool:
    """True when format(prompt, response) tokenises to the policy's prompt tokens + response tokens + end token."""
    prompt, response = PROBE
    as_text = model.tokenize([model.format(prompt, response)])["input_ids"][0].tolist()
    prompt_ids = policy.prompt_ids([prompt])[0]
    response_ids = policy.tokenizer(response, add_special_tokens=False)["input_ids"]
    return as_text == [*prompt_ids, *response_ids, policy.end_id]


class PolicyHeadReward:
    """`Scorer` by text like `RewardModelScorer`, plus `score_rows` that reads the policy's rows for free."""

    def __init__(self, model: RewardModel, policy: HiddenStatePolicy, name: str = "reward_model") -> None:
        self.name = name
        self.model = model
        self.policy = policy
        self.text = RewardModelScorer(model, name=name)
        self.from_rows = model.backbone is policy.backbone and same_token_layout(model, policy)

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        return self.text.score(prompts, responses)

    @torch.no_grad()
    def score_rows(self, rows: Rows, index: torch.Tensor, cost: Cost) -> list[float] | None:
        """Rewards of the finished rows `index`, or None when this reward model cannot read rows."""
        if not self.from_rows:
            return None
        hidden = self.policy.end_hidden(rows, index, cost)
        return head_values(self.model.head, hidden).tolist()
