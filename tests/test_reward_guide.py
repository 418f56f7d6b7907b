"""The reward model as a value of partial responses (`spi.reward_guide`): each row is scored as if it ended now,
exactly, peeking leaves the generation untouched, and beside anchored values the end token is fed once per chunk."""

from __future__ import annotations

import pytest
import torch

from spi_align.config import Config, build_config
from spi_align.core.errors import SpiError
from spi_align.core.records import Cost
from spi_align.scoring.reward_model import head_values
from spi_align.search.beam import ChunkBeamSearch
from spi_align.spi import ImprovedPolicy
from spi_align.values import ValueHead
from spi_align.values.anchored import AnchoredValue
from spi_align.values.kinds import make_value_kind
from spi_align.values.reward_guide import RowPartialReward, TextPartialReward, partial_reward_value, weighted_sum
from test_row_reward import PROMPTS, exact_rewards, setup


def test_head_values_reads_any_dtype_into_fp32_values():
    head = torch.nn.Linear(2, 1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[2.0, -1.0]]))
        head.bias.fill_(0.5)
    hidden = torch.tensor([[1.0, 1.0], [0.0, 3.0]], dtype=torch.bfloat16)
    values = head_values(head, hidden)
    assert values.dtype == torch.float32 and values.tolist() == [1.5, -2.5]
    assert head_values(head, hidden[0]).shape == ()


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


def test_anchored_values_and_the_reward_guide_share_one_peek_per_chunk_on_live_rows(tiny_causal_lm, smol_tokenizer):
    """spi.value=anchored with spi.reward_guide > 0: the anchored guide (R_t + α u(e_t)) and the partial reward
    (R_t) read the same end-token states; one one-token forward per chunk computes them, for the rows still in the
    beam only, and the guide equals what separate peeks give."""
    policy, _, reward = setup(tiny_causal_lm, smol_tokenizer, max_new_tokens=9, end_rate=0.15)
    cfg = build_config(Config, None, ["spi.value=anchored", "spi.chunk=3", "spi.reward_guide=0.5", "spi.rounds=1"])
    kind = make_value_kind(policy, cfg.spi, "tiny", seed=0)
    head = ValueHead(policy.hidden_size, "linear")
    torch.nn.init.normal_(head.net.weight)
    improved = ImprovedPolicy(policy, reward, kind, [AnchoredValue(head, [3], [1.0])], cfg)
    anchored, partial = kind.guide(improved.values, [1.0]), RowPartialReward(reward)
    feeds: list[int] = []
    feed = policy._feed_end

    def counted_feed(rows, need):
        feeds.append(int(need.sum()))
        return feed(rows, need)

    policy._feed_end = counted_feed
    guide, calls = improved.guidance(1), []

    def counted_guide(rows):
        before = len(feeds)
        got = guide(rows)
        calls.append((rows.size, feeds[before:], bool(rows.done.any())))
        policy._peeked = None  # separate peeks, for the expected value
        alone = anchored(rows)
        policy._peeked = None
        torch.testing.assert_close(got, alone + 0.5 * partial(rows), atol=1e-5, rtol=1e-5)
        del feeds[before:]  # the expected value's own peeks are not the search's
        return got

    ChunkBeamSearch(policy, counted_guide, LengthScorer(), width=2, successors=2, chunk=3).run(PROMPTS, Cost())
    assert len(calls) == 2  # chunks 1 and 2 of 9 tokens; the third ends every row
    assert any(size < 8 for size, _, _ in calls)  # rows ended mid-search: the guide saw only those left
    assert all(fed == [size] and not done for size, fed, done in calls)  # one forward per chunk, live rows only
