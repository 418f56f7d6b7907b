"""The reward model as a value of partial responses (`spi.reward_guide`): each row is scored as if it ended now,
exactly, and peeking leaves the generation untouched."""

from __future__ import annotations

import pytest
import torch

from spi_align.errors import SpiError
from spi_align.interfaces import Cost
from spi_align.search.reward_guide import RowPartialReward, TextPartialReward, partial_reward_value, weighted_sum
from test_row_reward import PROMPTS, exact_rewards, setup


def test_partial_responses_score_as_if_closed_with_the_end_token(tiny_causal_lm, smol_tokenizer):
    policy, reward_model, reward = setup(tiny_causal_lm, smol_tokenizer, max_new_tokens=12, end_rate=0.1)
    cost = Cost()
    rows = policy.start(PROMPTS, cost).select(torch.tensor([0, 0, 0, 1, 1, 1]))
    policy.extend(rows, 5, cost)
    got = partial_reward_value(reward, policy)(rows).tolist()
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
                RowPartialReward(reward)(rows)
        runs.append((rows.token_lists(), rows.hidden.clone(), rows.attention_mask.shape, rows.cache.get_seq_length()))
    assert runs[0][0] == runs[1][0]
    torch.testing.assert_close(runs[0][1], runs[1][1])
    assert runs[0][2:] == runs[1][2:]


def test_weighted_sum_adds_weighted_values_and_skips_missing_terms(tiny_causal_lm, smol_tokenizer):
    policy, _, _ = setup(tiny_causal_lm, smol_tokenizer)
    rows = policy.start(PROMPTS, Cost())
    policy.extend(rows, 3, Cost())
    guide = weighted_sum(
        [(1.0, lambda r: torch.tensor([1.0, -2.0])), (0.5, lambda r: torch.tensor([4.0, 6.0])), (2.0, None)]
    )
    # 1·(1, -2) + 0.5·(4, 6) = (3, 1), worked by hand
    assert guide(rows).tolist() == [3.0, 1.0]


class LengthScorer:
    """Stand-in text reward: characters of the response minus a tenth of the prompt's."""

    name = "length"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def score(self, prompts, responses):
        self.calls.append(list(responses))
        return [len(r) - len(p.text) / 10 for p, r in zip(prompts, responses, strict=True)]


def test_a_text_reward_scores_the_decoded_partial_responses_in_one_call(tiny_causal_lm, smol_tokenizer):
    policy, _, reward = setup(tiny_causal_lm, smol_tokenizer, max_new_tokens=12)
    scorer = LengthScorer()
    value = partial_reward_value(scorer, policy)
    assert isinstance(value, TextPartialReward)
    cost = Cost()
    rows = policy.start(PROMPTS, cost).select(torch.tensor([0, 0, 1]))
    policy.extend(rows, 4, cost)
    got = value(rows).tolist()
    texts = smol_tokenizer.batch_decode(rows.token_lists(), skip_special_tokens=True)
    prompts = [PROMPTS[i] for i in rows.prompt_index.tolist()]
    assert got == pytest.approx([len(t) - len(p.text) / 10 for p, t in zip(prompts, texts, strict=True)])
    assert scorer.calls == [texts]


def test_a_reward_model_that_cannot_read_rows_falls_back_to_text(tiny_causal_lm, smol_tokenizer):
    policy, _, reward = setup(tiny_causal_lm, smol_tokenizer)
    assert isinstance(partial_reward_value(reward.text, policy), TextPartialReward)
    reward.from_rows = False
    with pytest.raises(SpiError, match="cannot read"):
        RowPartialReward(reward)
