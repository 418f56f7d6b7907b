"""Eq. 12 targets and masks, the Σ γ V_i/β_i ranking, head fitting, and the ranking metric, on hand-checked cases."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import make_policy
from spi_align.core.records import Prompt
from spi_align.scoring.ranking import PromptSpearman, prompt_spearman
from spi_align.values import HeadStack, ValueHead
from spi_align.values.features import response_hidden_states
from spi_align.values.heads import guidance_weights, weighted_total
from spi_align.values.round import heldout_metrics, heldout_split
from spi_align.values.train import eq12_targets, fit_head, prefix_values, token_dataset


def test_eq12_targets_raw_and_centred_per_prompt():
    rewards, groups = [1.0, 3.0, 10.0, 20.0, 30.0], ["a", "a", "b", "b", "b"]
    assert eq12_targets(rewards, groups, centered=False).tolist() == rewards
    assert eq12_targets(rewards, groups, centered=True).tolist() == [-1.0, 1.0, -10.0, 0.0, 10.0]


def test_every_response_prefix_gets_its_rollouts_reward():
    hidden = [torch.zeros(3, 2), torch.ones(1, 2), torch.full((2, 2), 2.0)]
    data = token_dataset(hidden, [5.0, 7.0, 1.0], ["p", "p", "q"], centered=False)
    assert data.targets.tolist() == [5.0, 5.0, 5.0, 7.0, 1.0, 1.0]
    assert data.rollout.tolist() == [0, 0, 0, 1, 2, 2]
    assert data.group.tolist() == [0, 0, 0, 0, 1, 1]
    assert data.features.shape == (6, 2)
    centred = token_dataset(hidden, [5.0, 7.0, 1.0], ["p", "p", "q"], centered=True)
    assert centred.targets.tolist() == [-1.0, -1.0, -1.0, 1.0, 0.0, 0.0]


def test_features_cover_response_tokens_only_and_match_the_backbone(tiny_causal_lm, smol_tokenizer):
    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=8)
    prompts = [Prompt("a", "Hello there"), Prompt("b", "A much longer prompt than the first one, padded less")]
    responses = [[100, 200, 300], [400]]
    hidden = response_hidden_states(policy, prompts, responses)
    assert [h.shape[0] for h in hidden] == [3, 1]  # prompt tokens and padding are masked out
    ids = smol_tokenizer(policy.format_prompt(prompts[0]), add_special_tokens=False)["input_ids"] + responses[0]
    with torch.no_grad():
        alone = tiny_causal_lm.base_model(input_ids=torch.tensor([ids])).last_hidden_state[0, -3:]
    torch.testing.assert_close(hidden[0], alone, atol=1e-4, rtol=1e-4)


def _linear_head(w: list[float], b: float) -> ValueHead:
    head = ValueHead(len(w), "linear")
    with torch.no_grad():
        head.net.weight.copy_(torch.tensor([w]))
        head.net.bias.fill_(b)
    return head.eval()


def test_head_stack_is_the_weighted_sum_and_fuses_linear_heads():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    v0, v1 = _linear_head([1.0, 0.0], 0.0), _linear_head([0.0, 4.0], 1.0)
    # γ = 1, β = (1, 2): V = V0/1 + V1/2 -> rows: 1 + 0.5, 0 + 2.5, 1 + 2.5
    stack = HeadStack([v0, v1], [1.0, 0.5])
    assert stack.fused is not None
    assert stack(h).tolist() == pytest.approx([1.5, 2.5, 3.5])
    # ranking flips with the schedule: with β = (1, 2) row 1 beats row 0, with β = (1, 8) the first head dominates
    assert stack(h).argsort().tolist() == [0, 1, 2]
    assert HeadStack([v0, v1], [1.0, 1 / 8])(h).argsort().tolist() == [1, 0, 2]
    assert HeadStack([v0, v1], [1.0, 1 / 8])(h).tolist() == pytest.approx([1.125, 0.625, 1.625])


def test_mlp_heads_are_summed_like_linear_ones():
    torch.manual_seed(0)
    heads = [ValueHead(4, "mlp"), _linear_head([1.0, 2.0, 3.0, 4.0], 0.5)]
    h = torch.randn(5, 4)
    stack = HeadStack(heads, [2.0, 0.25])
    assert stack.fused is None
    expected = 2.0 * heads[0](h) + 0.25 * heads[1](h)
    torch.testing.assert_close(stack(h), expected.detach())


def test_weighted_total_adds_weighted_terms_in_fp32_and_weights_match_values():
    start = torch.tensor([1.0, 0.0])
    terms = [(2.0, torch.tensor([1.0, 2.0], dtype=torch.float64)), (0.5, torch.tensor([4.0, -2.0]))]
    total = weighted_total(iter(terms), start)
    assert total.tolist() == [5.0, 3.0] and total.dtype == torch.float32
    assert guidance_weights(["v0", "v1"], [1, 0.5]) == [1.0, 0.5]
    with pytest.raises(ValueError, match="one weight per value"):
        HeadStack([_linear_head([1.0], 0.0)], [1.0, 2.0])


def test_linear_fit_recovers_a_linear_value_and_round_trips(tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 6, generator=gen) * 3 + 1
    y = x @ torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0, 3.0]) + 4.0
    data = token_dataset([x], [0.0], ["p"], centered=False)
    data.targets = y
    head = fit_head(data, "linear", ridge=1e-6)
    torch.testing.assert_close(head(x).detach(), y, atol=1e-3, rtol=1e-3)
    head.save(tmp_path / "v")
    torch.testing.assert_close(ValueHead.load(tmp_path / "v")(x).detach(), head(x).detach())
    mlp = fit_head(data, "mlp", epochs=200, lr=1e-2)
    assert torch.nn.functional.mse_loss(mlp(x).detach(), y) < 0.2 * y.var()


def test_within_prompt_spearman_by_hand():
    # prompt a: perfect order; prompt b: reversed; prompt c too small to count
    predicted = [1, 2, 3, 3, 2, 1, 0, 1]
    rewards = [10, 20, 30, 10, 20, 30, 5, 6]
    groups = ["a", "a", "a", "b", "b", "b", "c", "c"]
    assert prompt_spearman(predicted, rewards, groups).mean == pytest.approx(0.0)
    assert prompt_spearman(predicted[:3], rewards[:3], groups[:3]).mean == pytest.approx(1.0)


def test_within_prompt_spearman_gives_ties_their_average_rank():
    # predicted 1, 1, 2, 3 -> ranks 1.5, 1.5, 3, 4; rewards in either order of the tied pair -> rho = sqrt(0.9)
    assert prompt_spearman([1, 1, 2, 3], [10, 20, 30, 40], ["a"] * 4).mean == pytest.approx(0.9**0.5)
    assert prompt_spearman([1, 1, 2, 3], [20, 10, 30, 40], ["a"] * 4).mean == pytest.approx(0.9**0.5)


def test_a_constant_prediction_counts_as_zero_and_constant_rewards_leave_the_prompt_out():
    # a prediction that scores a prompt's rollouts all alike ranks nothing: 0 for that prompt, not skipped
    assert prompt_spearman([7, 7, 7], [1, 2, 3], ["a"] * 3).mean == 0.0
    assert prompt_spearman([7, 7, 7, 1, 2, 3], [3, 2, 1, 1, 2, 3], list("aaabbb")).mean == pytest.approx(0.5)
    assert prompt_spearman([7, 7, 7, 1, 2, 3], [3, 2, 1, 1, 2, 3], list("aaabbb")) == PromptSpearman(
        pytest.approx(0.5), 2, 1
    )
    # rewards all equal (prompt a) carry no ranking: left out for every predictor, constant or not
    rewards = [5, 5, 5, 1, 2, 3]
    assert prompt_spearman([1, 2, 3, 1, 2, 3], rewards, list("aaabbb")) == PromptSpearman(pytest.approx(1.0), 1, 0)
    assert prompt_spearman([0, 0, 0, 0, 0, 0], rewards, list("aaabbb")) == PromptSpearman(0.0, 1, 1)
    # so two predictors of the same rollouts are averaged over the same prompts
    rewards = [1, 2, 3, 3, 2, 1, 4, 4, 4]
    sharp, flat = [1, 2, 3, 1, 2, 3, 1, 2, 3], [1, 2, 3, 0, 0, 0, 0, 0, 0]
    assert prompt_spearman(sharp, rewards, list("aaabbbccc")).prompts == 2
    assert prompt_spearman(flat, rewards, list("aaabbbccc")) == PromptSpearman(pytest.approx(0.5), 2, 1)
    assert math.isnan(prompt_spearman([1, 2], [1, 2], ["a", "a"]).mean)  # no prompt large enough


def test_prefix_values_read_the_state_after_the_prefix():
    head = _linear_head([1.0], 0.0)
    hidden = [torch.tensor([[1.0], [2.0], [3.0]]), torch.tensor([[7.0]])]
    assert prefix_values(head, hidden, 2) == [2.0, 7.0]
    assert prefix_values(head, hidden, None) == [3.0, 7.0]


def test_heldout_metrics_count_prompts_a_value_scored_all_alike():
    """A value that reads the same for every rollout of a prompt after 8 tokens (as a lexicon scores a short prefix
    0.0) gets 0 there for each such prompt, and the count says how many there were."""
    groups = [f"p{i // 4}" for i in range(40)]
    rewards = [float(i % 4) for i in range(40)]
    tokens = [[1] * 40 for _ in groups]
    _, test = heldout_split(groups, seed=0)

    def probe(fit_idx, test_idx):
        assert test_idx == test
        return lambda prefix: [0.0 if prefix == 8 else rewards[i] for i in test_idx]

    metrics = heldout_metrics(tokens, rewards, groups, 0, probe)
    held = len({groups[i] for i in test})
    assert metrics["heldout_spearman_at_8"] == 0.0 and metrics["heldout_constant_prompts_at_8"] == held
    assert metrics["heldout_spearman_at_16"] == pytest.approx(1.0) and metrics["heldout_constant_prompts_at_16"] == 0
    assert metrics["heldout_ranked_prompts_at_8"] == metrics["heldout_ranked_prompts_at_end"] == held


def test_heldout_metrics_rank_the_same_values_against_the_judge():
    """V = the reward itself, on 20 prompts of three rollouts with rewards 0, 1, 2 and judge labels 1, 0, 2: with the
    reward every held-out prompt ranks perfectly (ρ = 1); with the judge ranks (1, 2, 3) against (2, 1, 3) give
    ρ = 1 − 6·(1 + 1 + 0)/(3·8) = 0.5 on every prompt. Without labels no judge figure is reported."""
    from spi_align.values.round import PREFIXES, heldout_metrics

    groups = [f"p{i}" for i in range(20) for _ in range(3)]
    rewards = [float(j) for _ in range(20) for j in range(3)]
    labels = [float(x) for _ in range(20) for x in (1, 0, 2)]
    tokens = [[5, 6, 7]] * len(groups)

    def probe(fit_idx, test_idx):
        return lambda prefix: [rewards[i] for i in test_idx]

    metrics = heldout_metrics(tokens, rewards, groups, 0, probe, labels)
    assert metrics["heldout_ranked_prompts_at_end"] > 0
    for prefix in PREFIXES:
        at = f"at_{prefix or 'end'}"
        assert metrics[f"heldout_spearman_{at}"] == pytest.approx(1.0)
        assert metrics[f"heldout_judge_spearman_{at}"] == pytest.approx(0.5)
    assert not any("judge" in key for key in heldout_metrics(tokens, rewards, groups, 0, probe))


def test_proxy_agreement_is_the_rewards_agreement_with_the_judge_on_held_out_prompts_only():
    """Three rollouts a prompt, rewards 0, 1, 2, judge labels 1, 0, 2 on the held-out prompts: of the three pairs
    the reward orders (0, 1) against the judge and (0, 2), (1, 2) with it, accuracy 2/3, and ranks (1, 2, 3) against
    (2, 1, 3) give ρ = 0.5. On the prompts fitted on, the labels are reversed (every pair wrong): they must not
    count. Without labels, nothing is reported."""
    from spi_align.spi import proxy_agreement
    from spi_align.values.kinds import Rollouts

    groups = [f"p{i}" for i in range(30) for _ in range(3)]
    _, test = heldout_split(groups, seed=0)
    assert test and len(test) < len(groups)  # the case needs both sides
    held = {groups[i] for i in test}
    rewards = [float(i % 3) for i in range(len(groups))]
    labels = [(1.0, 0.0, 2.0)[i % 3] if g in held else float(2 - i % 3) for i, g in enumerate(groups)]
    prompts = [Prompt(id=g, text=g) for g in groups]
    data = Rollouts(prompts, [[1]] * len(groups), rewards, labels=labels)
    found = proxy_agreement(data, seed=0)
    assert found["heldout_reward_judge_accuracy"] == pytest.approx(2 / 3)
    assert found["heldout_reward_judge_spearman"] == pytest.approx(0.5)
    assert proxy_agreement(Rollouts(prompts, [[1]] * len(groups), rewards), seed=0) == {}
