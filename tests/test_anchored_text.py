"""`spi.value=anchored` with a reward that scores text: the anchor R_t is the scorer on the decoded first t tokens
(on the fitting side and in the search), and the guide is Σ w · (R_t + u(e_t)) on the rows."""

from __future__ import annotations

import pytest
import torch

from conftest import make_policy
from mocks.scorers import CountScorer
from spi_align.config import SPIConfig
from spi_align.core.records import Cost, Prompt
from spi_align.values.anchored import AnchoredValue, TextAnchor, boundary_rows
from spi_align.values.heads import ValueHead
from spi_align.values.kinds import Rollouts, make_value_kind
from spi_align.values.prefix_states import prefix_states

PROMPTS = [Prompt(f"p{i}", f"Question {i}: tell me about trees.") for i in range(5)]


def test_text_anchor_scores_each_boundary_rows_decoded_prefix(smol_tokenizer):
    scorer = CountScorer("e")
    tokens = [smol_tokenizer("the tree here")["input_ids"], smol_tokenizer("green leaves everywhere")["input_ids"]]
    anchor = TextAnchor(scorer, smol_tokenizer, PROMPTS[:2], tokens)
    keys = [("p0", 1), ("p0", 2), ("p1", 3)]
    got = anchor(torch.zeros(3, 4), [0, 0, 1], keys).tolist()
    expected = [
        smol_tokenizer.decode(tokens[0][:1]).count("e"),
        smol_tokenizer.decode(tokens[0][:2]).count("e"),
        smol_tokenizer.decode(tokens[1][:3]).count("e"),
    ]
    assert got == pytest.approx(expected) and len(set(expected)) > 1


def test_anchored_values_on_a_text_reward_fit_and_guide_with_the_partial_text(tiny_causal_lm, smol_tokenizer):
    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=12)
    scorer = CountScorer("e")
    spi = SPIConfig(value="anchored", chunk=4, ridge=1.0)
    kind = make_value_kind(policy, spi, "tiny", seed=0)
    kind.reward = scorer
    assert kind.reward_head() is None  # a text scorer: no head on the policy's states
    rows = policy.sample(PROMPTS, 6, Cost())
    tokens = rows.token_lists()
    prompts = [PROMPTS[i] for i in rows.prompt_index.tolist()]
    texts = smol_tokenizer.batch_decode(tokens, skip_special_tokens=True)
    rollouts = Rollouts(prompts, tokens, scorer.score(prompts, texts))
    value, metrics = kind.fit(rollouts)
    assert "heldout_partial_reward_spearman_at_4" in metrics and metrics["alpha_at_4"] in (0.0, 0.5, 1.0)
    # the anchor the fit used at each boundary row is the scorer on that row's decoded prefix
    states = prefix_states(policy, prompts, tokens, kind.lengths())
    _, _, keys, index = boundary_rows(states, kind.lengths(), rollouts.rewards, [p.id for p in prompts])
    assert keys and {t for _, t in keys} <= {4, 8}

    guide = kind.guide([value, value], [1.0, 0.5])
    cost = Cost()
    live = policy.start(PROMPTS[:2], cost).select(torch.tensor([0, 0, 1]))
    policy.extend(live, 4, cost)
    got = guide(live)
    partial = smol_tokenizer.batch_decode(live.token_lists(), skip_special_tokens=True)
    anchor = torch.tensor([t.count("e") for t in partial], dtype=torch.float32)
    closed = policy.peek_end_hidden(live)
    expected = 1.5 * anchor + 1.5 * value.alpha_at(live.length) * value.head(closed).float()
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def test_with_every_alpha_zero_the_text_guide_is_the_partial_reward_without_a_peek(tiny_causal_lm, smol_tokenizer):
    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=12)
    kind = make_value_kind(policy, SPIConfig(value="anchored", chunk=4), "tiny", seed=0)
    kind.reward = CountScorer("e")
    head = ValueHead(policy.hidden_size, "linear")
    torch.nn.init.zeros_(head.net.weight)
    torch.nn.init.zeros_(head.net.bias)
    zero = AnchoredValue(head, [4], [1.0])
    guide = kind.guide([zero, zero], [1.0, 0.5])
    cost = Cost()
    live = policy.start(PROMPTS[:2], cost)
    policy.extend(live, 4, cost)
    peeked = policy.peek_end_hidden
    policy.peek_end_hidden = lambda rows: pytest.fail("α = 0 everywhere: no end-token forward is needed")
    partial = smol_tokenizer.batch_decode(live.token_lists(), skip_special_tokens=True)
    assert guide(live).tolist() == pytest.approx([1.5 * t.count("e") for t in partial])
    policy.peek_end_hidden = peeked
    with torch.no_grad():
        head.net.bias.fill_(1.0)  # a learned part that is not zero: the guide reads e_t again
    assert kind.guide([zero], [1.0])(live).tolist() == pytest.approx([t.count("e") + 1.0 for t in partial])


def test_the_text_guide_reads_states_only_at_lengths_where_some_alpha_is_not_zero(tiny_causal_lm, smol_tokenizer):
    """α chosen 0.5 at the first decision length and 0 at the second: at 4 tokens the guide peeks e_t and adds the
    learned part; at 8 tokens it is the partial reward alone, with no peek (the same value the formula gives)."""
    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=12)
    kind = make_value_kind(policy, SPIConfig(value="anchored", chunk=4), "tiny", seed=0)
    kind.reward = CountScorer("e")
    head = ValueHead(policy.hidden_size, "linear")
    with torch.no_grad():
        head.net.bias.fill_(2.0)
    early = AnchoredValue(head, [4, 8], [0.5, 0.0])
    guide = kind.guide([early, early], [1.0, 1.0])
    cost = Cost()
    live = policy.start(PROMPTS[:2], cost)
    policy.extend(live, 4, cost)
    peeks = []
    peek = policy.peek_end_hidden
    policy.peek_end_hidden = lambda rows: peeks.append(rows.length.tolist()) or peek(rows)
    partial = smol_tokenizer.batch_decode(live.token_lists(), skip_special_tokens=True)
    got = guide(live)
    assert peeks == [[4, 4]]
    learned = head(peek(live)).float()
    expected = torch.tensor([2.0 * t.count("e") for t in partial]) + 2 * 0.5 * learned
    assert bool(learned.abs().min() > 0.1)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)
    policy.extend(live, 4, cost)
    assert not bool(live.done.any())  # a row that ended before 8 tokens would take α(8) = α of 4 = 0.5
    partial = smol_tokenizer.batch_decode(live.token_lists(), skip_special_tokens=True)
    assert guide(live).tolist() == pytest.approx([2 * t.count("e") for t in partial])
    assert peeks == [[4, 4]], "α = 0 at 8 tokens for every round: no end-token forward is needed there"
