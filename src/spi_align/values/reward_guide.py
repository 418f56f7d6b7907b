"""The reward on partial responses as a value function (`spi.reward_guide`), for every kind of reward.

V_R(x, y_{1:t}) = r(x, y_{1:t}): the reward model reads the partial response as if it ended there. It needs no
training, and ranking a prompt's candidates by it is what speculative-rejection and reward-guided decoders do.

- A reward head on the policy's own hidden states (`PolicyHeadReward.from_rows`) reads each row's state after
  the end-of-turn token: one one-token forward per chunk, the KV cache cropped back after (no re-encoding).
- Any other scorer (a text scorer, a reward-model directory, a Python callable) scores the decoded partial
  responses in one batched call per chunk.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spi_align.core.errors import SpiError
from spi_align.core.interfaces import Policy, Scorer, ValueFunction
from spi_align.core.records import report_term
from spi_align.core.rows import Rows
from spi_align.scoring.finite import finite_scores
from spi_align.scoring.reward_model import head_values
from spi_align.scoring.row_reward import PolicyHeadReward
from spi_align.values.heads import weighted_total


class RowPartialReward:
    """`value(rows) -> (R,)`: the reward head on the state after each partial response + end-of-turn token."""

    term = "R_partial"
    """Its name in a recorded trace's guidance terms (`WeightedSum` reports it)."""

    def __init__(self, reward: PolicyHeadReward) -> None:
        if not reward.from_rows:
            raise SpiError("this reward model cannot read the policy's rows; score partial responses as text")
        self.reward = reward

    @torch.no_grad()
    def __call__(self, rows: Rows) -> torch.Tensor:
        hidden = self.reward.policy.peek_end_hidden(rows)
        return head_values(self.reward.model.head, hidden)


class TextPartialReward:
    """`value(rows) -> (R,)`: the scorer on (prompt, decoded partial response) of every row, one batched call."""

    term = "R_partial"
    """Its name in a recorded trace's guidance terms (`WeightedSum` reports it)."""

    def __init__(self, reward: Scorer, policy: Policy) -> None:
        self.reward, self.policy = reward, policy

    def __call__(self, rows: Rows) -> torch.Tensor:
        if not rows.prompts:
            raise SpiError("rows carry no prompts: the reward cannot score partial responses as text")
        texts = self.policy.texts(rows)
        prompts = [rows.prompts[i] for i in rows.prompt_index.tolist()]
        scores = finite_scores(self.reward, self.reward.score(prompts, texts), texts)
        return torch.tensor(scores, dtype=torch.float32, device=rows.length.device)


def partial_reward_value(reward: Scorer, policy: Policy) -> ValueFunction:
    """The cheapest exact way to score partial responses with `reward` (see the module docstring); a reward that
    reads partial rows its own way gives its `partial_value()` (a tuned reward on the policy's lower layers)."""
    if isinstance(reward, PolicyHeadReward) and reward.from_rows:
        return RowPartialReward(reward)
    own = getattr(reward, "partial_value", None)
    if own is not None:
        return own()
    return TextPartialReward(reward, policy)


class WeightedSum:
    """Σ_j w_j f_j(rows) over the value functions given (None terms are skipped)."""

    def __init__(self, parts: Sequence[tuple[float, ValueFunction | None]]) -> None:
        self.parts = [(float(w), f) for w, f in parts if f is not None and w != 0]

    def __call__(self, rows: Rows) -> torch.Tensor:
        total = torch.zeros(rows.size, device=rows.length.device)
        for weight, value in self.parts:
            values = value(rows)
            if hasattr(value, "term"):  # a named term for a trace being recorded (the others report their own)
                report_term(value.term, weight, values)
            total = weighted_total([(weight, values)], total)
        return total


def weighted_sum(parts: Sequence[tuple[float, ValueFunction | None]]) -> ValueFunction:
    return WeightedSum(parts)
