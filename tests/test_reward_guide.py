"""The reward model as a value of partial responses (`spi.reward_guide`): each row is scored as if it ended now,
exactly, and peeking leaves the generation untouched."""

from __future__ import annotations

import pytest
import torch

from spi_align.errors import SpiError
from spi_align.interfaces import Cost
from spi_align.search.reward_guide import RewardPrefixValue, with_reward_prefix
from test_row_reward import PROMPTS, exact_rewards, setup


def test_partial_responses_score_as_if_closed_with_the_end_token(tiny_causal_lm, smol_tokenizer):
    policy, reward_model, reward = setup(tiny_causal_lm, smol_tokenizer, max_new_tokens=12, end_rate=0.1)
    cost = Cost()
    rows = policy.start(PROMPTS, cost).select(torch.tensor([0, 0, 0, 1, 1, 1]))
    policy.extend(rows, 5, cost)
    got = RewardPrefixValue(reward)(rows).tolist()
    prompt_tokens = [rows.prompt_tokens[p] for p in rows.prompt_index.tolist()]
    rows_seen = zip(prompt_tokens, rows.token_lists(), rows.done.tolist(), strict=True)
    expected = exact_rewards(policy, reward_model, rows_seen)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), atol=1e-4, rtol=1e-4)


def test_peeking_leaves_the_generation_exactly_as_without_it(tiny_causal_lm, smol_tokenizer):
    runs = []
    for peek in (False, True):
        policy, _, reward = setup(tiny_causal_lm, smol_tokenizer, max_new_tokens=12)
        policy.generator.manual_seed(7)
        cost = Cost()
        rows = policy.start(PROMPTS, cost).select(torch.tensor([0, 0, 1, 1]))
        for _ in range(3):
            policy.extend(rows, 4, cost)
            if peek:
                RewardPrefixValue(reward)(rows)
        runs.append((rows.token_lists(), rows.hidden.clone(), rows.attention_mask.shape, rows.cache.get_seq_length()))
    assert runs[0][0] == runs[1][0]
    torch.testing.assert_close(runs[0][1], runs[1][1])
    assert runs[0][2:] == runs[1][2:]


def test_the_guide_adds_the_weighted_reward_to_the_values(tiny_causal_lm, smol_tokenizer):
    policy, _, reward = setup(tiny_causal_lm, smol_tokenizer)
    rows = policy.start(PROMPTS, Cost())
    policy.extend(rows, 3, Cost())
    prefix = RewardPrefixValue(reward)
    values = torch.tensor([1.0, -2.0])
    combined = with_reward_prefix(lambda r: values, prefix, 0.5)(rows)
    torch.testing.assert_close(combined, values + 0.5 * prefix(rows))


def test_a_reward_that_cannot_read_rows_is_refused(tiny_causal_lm, smol_tokenizer):
    _, _, reward = setup(tiny_causal_lm, smol_tokenizer)
    with pytest.raises(SpiError, match="reward_guide"):
        RewardPrefixValue(reward.text)
