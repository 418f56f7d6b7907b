"""The partial-reward baseline of the value report: the reward on each held-out rollout's prefix, ranked within its
prompt against the final reward."""

from __future__ import annotations

import pytest

from spi_align.config import GenerationConfig
from spi_align.core.records import Prompt
from spi_align.policy import HFPolicy
from spi_align.values.baseline import partial_reward_spearman


class CountScorer:
    """Reward = how many times the word 'yes' appears in the response."""

    name = "yes"

    def score(self, prompts, responses):
        return [float(r.split().count("yes")) for r in responses]


def test_text_reward_on_prefixes_is_ranked_against_the_final_reward(tiny_causal_lm, smol_tokenizer):
    policy = HFPolicy(tiny_causal_lm, smol_tokenizer, GenerationConfig(max_new_tokens=8))
    yes, no = (
        smol_tokenizer(" yes", add_special_tokens=False)["input_ids"],
        smol_tokenizer(" no", add_special_tokens=False)["input_ids"],
    )
    assert len(yes) == len(no) == 1
    y, n = yes[0], no[0]
    # one prompt, three rollouts; final rewards 1, 2, 3 ('yes' counts), but after 1 token: 0, 1, 1
    tokens = [[n, y, n], [y, n, y], [y, y, y]]
    prompts = [Prompt("p", "Say yes.")] * 3
    finals = CountScorer().score(prompts, smol_tokenizer.batch_decode(tokens))
    assert finals == [1.0, 2.0, 3.0]
    got = partial_reward_spearman(policy, CountScorer(), prompts, tokens, finals, (1, None))
    # at t=1 the values (0, 1, 1) have average ranks (1, 2.5, 2.5) against (1, 2, 3): Spearman = 0.866
    assert got["heldout_partial_reward_spearman_at_1"] == pytest.approx(0.8660, abs=1e-4)
    assert got["heldout_partial_reward_spearman_at_end"] == pytest.approx(1.0)
    assert not any("judge" in key for key in got)
    # against a judge that ranks them 2, 3, 1: at t=1 ranks (1, 2.5, 2.5) vs (2, 3, 1), centred (−1, ½, ½) and
    # (0, 1, −1): covariance 0, ρ = 0; at the end (1, 2, 3) vs (2, 3, 1): ρ = 1 − 6·(1 + 1 + 4)/(3·8) = −0.5
    judged = partial_reward_spearman(policy, CountScorer(), prompts, tokens, finals, (1, None), labels=[2.0, 3.0, 1.0])
    assert judged["heldout_partial_reward_judge_spearman_at_1"] == pytest.approx(0.0, abs=1e-9)
    assert judged["heldout_partial_reward_judge_spearman_at_end"] == pytest.approx(-0.5)
    assert {k: v for k, v in judged.items() if "judge" not in k} == got  # the reward's figures are unchanged
