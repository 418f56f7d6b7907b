"""A reward model on the policy's own backbone scores finished rows from their hidden state, exactly."""

from __future__ import annotations

import torch

from spi_align.config import GenerationConfig
from spi_align.core.records import Cost, Prompt
from spi_align.policy import HFPolicy
from spi_align.scoring.reward_model import RewardModel
from spi_align.scoring.row_reward import PolicyHeadReward, same_token_layout
from spi_align.search import BestOfN
from spi_align.search.beam import ChunkBeamSearch

PROMPTS = [Prompt("a", "Name three colours."), Prompt("b", "Write a poem about the sea.")]


def setup(model, tokenizer, max_new_tokens=10, end_rate=0.0):
    policy = HFPolicy(model, tokenizer, GenerationConfig(max_new_tokens=max_new_tokens, temperature=1.0, top_k=0))
    if end_rate:
        gen = torch.Generator().manual_seed(1)
        sample = policy.sampler

        def sometimes_end(logits, generator):
            token = sample(logits, generator)
            return torch.where(torch.rand(token.shape, generator=gen) < end_rate, 2, token)

        policy.sampler = sometimes_end
    reward_model = RewardModel(policy.backbone, tokenizer)
    torch.nn.init.normal_(reward_model.head.weight, std=1.0)
    return policy, reward_model, PolicyHeadReward(reward_model, policy)


def exact_rewards(policy, reward_model, results_rows):
    """Rewards of prompt tokens + response tokens (+ the end token when the row did not end itself)."""
    out = []
    for prompt_tokens, response, ended in results_rows:
        ids = [*prompt_tokens, *response] + ([] if ended else [2])
        with torch.no_grad():
            out.append(float(reward_model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))))
    return out


def test_probe_accepts_the_smol_chat_layout(tiny_causal_lm, smol_tokenizer):
    policy, reward_model, reward = setup(tiny_causal_lm, smol_tokenizer)
    assert same_token_layout(reward_model, policy) and reward.from_rows
    other = RewardModel(type(policy.backbone)(policy.backbone.config), smol_tokenizer)
    assert not PolicyHeadReward(other, policy).from_rows  # another backbone: scores by text


def test_best_of_n_scores_rows_exactly_without_reencoding(tiny_causal_lm, smol_tokenizer):
    policy, reward_model, reward = setup(tiny_causal_lm, smol_tokenizer, end_rate=0.15)
    cost = Cost()
    rows = policy.sample(PROMPTS, 4, cost)
    ended = rows.done.clone()
    tokens = rows.token_lists()
    index = torch.arange(rows.size)
    got = reward.score_rows(rows, index, cost)
    expected = exact_rewards(
        policy,
        reward_model,
        [
            (rows.prompt_tokens[p], t, bool(e))
            for p, t, e in zip(rows.prompt_index.tolist(), tokens, ended, strict=True)
        ],
    )
    assert ended.any() and not ended.all()
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), atol=1e-4, rtol=1e-4)
    results = BestOfN(policy, reward, 4).run(PROMPTS, Cost())
    for result in results:
        assert all(c.score is not None for c in result.candidates)
        assert result.chosen.score == max(c.score for c in result.candidates)


def test_beam_search_scores_its_whole_pool_from_rows(tiny_causal_lm, smol_tokenizer):
    policy, reward_model, reward = setup(tiny_causal_lm, smol_tokenizer, max_new_tokens=9, end_rate=0.1)
    cost = Cost()
    results = ChunkBeamSearch(policy, lambda rows: rows.logprob, reward, width=2, successors=2, chunk=3).run(
        PROMPTS, cost
    )
    prompt_tokens = [smol_tokenizer(policy.format_prompt(p), add_special_tokens=False)["input_ids"] for p in PROMPTS]
    for i, result in enumerate(results):
        expected = exact_rewards(
            policy, reward_model, [(prompt_tokens[i], c.token_ids, c.finished) for c in result.candidates]
        )
        got = [c.score for c in result.candidates]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), atol=1e-4, rtol=1e-4)
    assert cost.reward_calls == sum(len(r.candidates) for r in results)
