"""The anchored value's new maths on hand-checked cases: tree targets (a shared prefix's target is its leaves' mean),
the within-prompt ranking loss, α chosen per decision length, and α(t) read back in the search."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from spi_align.data.prompts import heldout_prompts
from spi_align.scoring.ranking import centred
from spi_align.values.anchored import (
    AnchoredGuide,
    AnchoredValue,
    _fit,
    boundary_rows,
    choose_alphas,
    fit_anchored,
    ranking_loss,
    ranking_pairs,
)
from spi_align.values.heads import ValueHead
from spi_align.values.prefix_states import PrefixStates


def _state(lengths: list[int], closed: list[float]) -> PrefixStates:
    return PrefixStates(lengths, torch.zeros(len(lengths), 1), torch.tensor([[c] for c in closed]))


def test_a_shared_prefix_is_one_row_whose_target_is_its_leaves_mean():
    # prompt p: a tree with two first chunks; leaves 0, 1, 2 share tokens [5, 6], leaf 3 starts [5, 7];
    # at length 4 leaves 0 and 1 still share [5, 6, 1, 1], leaf 2 went [5, 6, 2, 2]. Prompt q has one leaf.
    tokens = [[5, 6, 1, 1, 9, 9], [5, 6, 1, 1, 8, 8], [5, 6, 2, 2, 7, 7], [5, 7, 3, 3, 3, 3], [5, 6, 1, 1, 0, 0]]
    rewards = [1.0, 3.0, 8.0, 4.0, 100.0]
    groups = ["p", "p", "p", "p", "q"]
    states = [_state([2, 4, 6], [10.0 * i + 2, 10.0 * i + 4, 10.0 * i + 6]) for i in range(5)]
    x, targets, keys, index = boundary_rows(states, [2, 4], rewards, groups, tokens)
    assert keys == [("p", 2), ("p", 4), ("p", 4), ("p", 2), ("p", 4), ("q", 2), ("q", 4)]
    # [5, 6] at 2: leaves 0, 1, 2 → (1 + 3 + 8) / 3; [5, 6, 1, 1] at 4: leaves 0, 1 → 2; leaf 2 alone at 4: 8;
    # [5, 7] and [5, 7, 3, 3]: leaf 3 → 4; q's identical tokens are another prompt's: its own row, never merged
    assert targets.tolist() == pytest.approx([4.0, 2.0, 8.0, 4.0, 4.0, 100.0, 100.0])
    assert index == [0, 0, 2, 3, 3, 4, 4]  # the first leaf's state stands for the node
    assert x[:, 0].tolist() == [2.0, 4.0, 24.0, 32.0, 34.0, 42.0, 44.0]
    # without tokens every rollout is its own row, as before
    _, plain, plain_keys, _ = boundary_rows(states, [2, 4], rewards, groups)
    assert len(plain_keys) == 10 and plain.tolist()[:2] == [1.0, 1.0]


def test_ranking_pairs_put_the_better_target_first_within_one_key_and_skip_ties():
    targets = torch.tensor([1.0, 3.0, 3.0, 0.0, 5.0])
    keys = [("p", 4), ("p", 4), ("p", 4), ("p", 8), ("p", 8)]
    better, worse = ranking_pairs(targets, keys)
    assert sorted(zip(better.tolist(), worse.tolist(), strict=True)) == [(1, 0), (2, 0), (4, 3)]


def test_ranking_loss_is_the_mean_pairwise_logistic_loss():
    values = torch.tensor([0.0, 2.0, 1.0])
    better, worse = torch.tensor([1, 2]), torch.tensor([0, 1])
    # pair (1 over 0): V diff +2 → log(1 + e^-1) at scale 2; pair (2 over 1): diff −1 → log(1 + e^0.5)
    expected = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(0.5))) / 2
    assert float(ranking_loss(values, better, worse, 2.0)) == pytest.approx(expected)
    assert float(ranking_loss(values, torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long), 1.0)) == 0


def test_the_ranking_loss_refit_ranks_its_training_pairs_better_than_squared_error_alone():
    """Targets are a monotone but very non-linear function of feature 0, with an outlier per prompt that pulls the
    squared-error fit towards feature 1; the ranking term lowers the pairwise loss on the same rows."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(240, 3, generator=gen)
    keys = [(f"p{i // 6}", 4) for i in range(240)]
    target = torch.sign(x[:, 0]) * x[:, 0].abs() ** 3
    target[::6] += 25 * x[::6, 1]
    partial = torch.zeros(240)
    residual = centred(target - partial, keys)
    plain = _fit(x, residual, keys, ridge=1.0, seed=0)
    better, worse = ranking_pairs(target, keys)
    ranked = _fit(x, residual, keys, ridge=1.0, seed=0, rank_weight=5.0, partial=partial, pairs=(better, worse))
    sigma = float(residual.std())
    with torch.no_grad():
        loss_plain = float(ranking_loss(plain(x), better, worse, sigma))
        loss_ranked = float(ranking_loss(ranked(x), better, worse, sigma))
    assert loss_ranked < loss_plain - 0.01


def test_alpha_per_depth_keeps_the_learned_part_only_where_it_ranks_better():
    # 4 prompts × 3 rows at lengths 4 and 8. At 4 the partial reward ranks backwards and the learned part right;
    # at 8 the partial reward ranks right and the learned part backwards.
    keys, partial, learned, target = [], [], [], []
    for p in range(4):
        for j in range(3):
            for t in (4, 8):
                keys.append((f"p{p}", t))
                target.append(float(j))
                partial.append(float(-j) if t == 4 else float(j))
                learned.append(1.5 * j if t == 4 else -1.5 * j)
    args = (torch.tensor(partial), torch.tensor(learned), torch.tensor(target), keys, [4, 8])
    alphas, scores = choose_alphas(*args, per_depth=True)
    assert alphas == {4: 1.0, 8: 0.0} and scores == {4: pytest.approx(1.0), 8: pytest.approx(1.0)}
    # at 4, α = ½ gives V = −¼j (backwards) and α = 1 gives ½j (right); at 8, α = 0 keeps V = j (right).
    # One α for both: α = 1 ranks right at 4 and backwards at 8 (−½j), α = ½ backwards at 4 and right at 8 (¼j),
    # α = 0 backwards and right: every mean is 0, and the tie keeps the smallest α
    common, _ = choose_alphas(*args, per_depth=False)
    assert common == {4: 0.0, 8: 0.0}


def test_fit_anchored_per_depth_reports_alpha_at_each_length():
    """Final reward = anchor + 2·s, s = feature 1 at length 4; at length 8 feature 1 reads −0.2·s. One head on both
    lengths learns w₁ ≈ 1.5 > 0: right at 4, wrong-signed at 8, so α(4) > 0 is kept and α(8) = 0."""
    gen = torch.Generator().manual_seed(3)
    states, rewards, groups = [], [], []
    for p in range(30):
        for _ in range(6):
            f = torch.randn(3, 2, generator=gen)
            f[1, 0] = f[0, 0]  # the anchor reads the same at 4 and 8
            f[1, 1] = -0.2 * f[0, 1]
            states.append(PrefixStates([4, 8, 12], torch.zeros(3, 2), f))
            rewards.append(float(f[0, 0] + 2 * f[0, 1]))
            groups.append(f"p{p}")
    head = torch.nn.Linear(2, 1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0]]))
        head.bias.zero_()
    value, metrics = fit_anchored(states, rewards, groups, head, [4, 8], ridge=1e-3, seed=0, per_depth=True)
    assert value.alphas[0] > 0 and value.alphas[1] == 0.0
    assert metrics["alpha_at_4"] == value.alphas[0] and metrics["alpha_at_8"] == 0.0
    assert metrics["heldout_spearman_at_4"] > metrics["heldout_partial_reward_spearman_at_4"] + 0.2
    # the judge's labels are never fitted on: the same value and figures, and ranked against labels equal to the
    # reward the judge figures are the reward's, against their negation the reward's negated (no ties here)
    for sign in (1.0, -1.0):
        again, judged = fit_anchored(
            states,
            rewards,
            groups,
            head,
            [4, 8],
            ridge=1e-3,
            seed=0,
            per_depth=True,
            labels=[sign * r for r in rewards],
        )
        assert again.alphas == value.alphas and {k: v for k, v in judged.items() if "judge" not in k} == metrics
        for t in (4, 8):
            for name in ("", "partial_reward_"):
                got = judged[f"heldout_{name}judge_spearman_at_{t}"]
                assert got == pytest.approx(sign * metrics[f"heldout_{name}spearman_at_{t}"], abs=1e-9)


def test_alpha_at_a_length_is_the_last_decision_lengths_and_survives_save_and_load(tmp_path):
    head = ValueHead(2)
    with torch.no_grad():
        head.net.weight.copy_(torch.tensor([[1.0, 2.0]]))
        head.net.bias.fill_(0.5)
    value = AnchoredValue(head, [4, 8, 12], [0.5, 1.0, 0.0])
    lengths = torch.tensor([1, 4, 7, 8, 11, 12, 30])
    assert value.alpha_at(lengths).tolist() == [0.5, 0.5, 0.5, 1.0, 1.0, 0.0, 0.0]
    closed = torch.tensor([[1.0, 1.0], [2.0, 0.0]])
    assert value(closed, torch.tensor([4, 8])).tolist() == pytest.approx([0.5 * 3.5, 1.0 * 2.5])
    value.save(tmp_path / "v")
    again = AnchoredValue.load(tmp_path / "v")
    assert again.lengths == [4, 8, 12] and again.alphas == [0.5, 1.0, 0.0]
    assert again(closed, torch.tensor([4, 8])).tolist() == pytest.approx([1.75, 2.5])
    (tmp_path / "v" / "anchored.json").unlink()  # a value saved before α per length: α folded into the head
    assert AnchoredValue.load(tmp_path / "v").alpha_at(lengths).tolist() == [1.0] * 7
    assert not AnchoredValue(head, [4], [0.0]).learned and value.learned


def test_the_guide_applies_each_rows_alpha_by_its_length():
    """Σ_i w_i (R_t + α_i(t) u_i(e_t)) with a reward head as anchor, two rounds, rows at lengths 4 and 8."""
    closed = torch.tensor([[1.0, 2.0], [3.0, 1.0]])
    rows = SimpleNamespace(length=torch.tensor([4, 8]))
    policy = SimpleNamespace(device=torch.device("cpu"), peek_end_hidden=lambda r: closed)
    anchor = torch.nn.Linear(2, 1)
    u1, u2 = ValueHead(2), ValueHead(2)
    with torch.no_grad():
        anchor.weight.copy_(torch.tensor([[1.0, 0.0]]))
        anchor.bias.zero_()
        u1.net.weight.copy_(torch.tensor([[0.0, 1.0]]))  # u1 = feature 1
        u1.net.bias.zero_()
        u2.net.weight.copy_(torch.tensor([[1.0, 1.0]]))  # u2 = feature 0 + feature 1
        u2.net.bias.zero_()
    v1 = AnchoredValue(u1, [4, 8], [1.0, 0.0])
    v2 = AnchoredValue(u2, [4, 8], [0.0, 0.5])
    got = AnchoredGuide(policy, anchor, [v1, v2], [1.0, 2.0])(rows)
    # row 0 (t = 4): 3·R + 1·1·u1 + 2·0·u2 = 3·1 + 2 = 5; row 1 (t = 8): 3·3 + 1·0·u1 + 2·0.5·u2 = 9 + 4 = 13
    assert got.tolist() == pytest.approx([5.0, 13.0])
    bare = AnchoredGuide(policy, anchor, [u1], [1.0])(rows)  # a bare head: α = 1 everywhere
    assert bare.tolist() == pytest.approx([1.0 + 2.0, 3.0 + 1.0])


def _anchored_data(flip_heldout: bool, seed: int = 0):
    """40 prompts × 6 rollouts; the anchor reads feature 0. On training prompts the final reward is f0 + 2·f1; on the
    held-out prompts (`heldout_prompts`) f0 − 2·f1 when `flip_heldout`, else the same as on training prompts."""
    gen = torch.Generator().manual_seed(seed)
    groups = [f"p{p}" for p in range(40) for _ in range(6)]
    held = heldout_prompts(groups, seed=0)
    states, rewards = [], []
    for g in groups:
        f = torch.randn(3, 2, generator=gen)
        states.append(PrefixStates([4, 8, 12], torch.zeros(3, 2), f))
        sign = -1.0 if flip_heldout and g in held else 1.0
        rewards.append(float(f[0, 0] + sign * 2 * f[0, 1]))
    head = torch.nn.Linear(2, 1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0]]))
        head.bias.zero_()
    return states, rewards, groups, head


def test_anchored_choices_never_see_the_heldout_prompts_and_v_may_rank_worse_there():
    """Choices (ridge, λ, α) are made on the choice prompts, so flipping the held-out prompts' rewards changes none
    of them; and the held-out figure then honestly shows the learned part ranking those prompts backwards, below R_t
    (a choice made on the held-out prompts would have kept α = 0 and reported V = R_t there)."""
    fits = {}
    for flip in (False, True):
        states, rewards, groups, head = _anchored_data(flip)
        fits[flip] = fit_anchored(states, rewards, groups, head, [4], ridge=1e-3, seed=0, rank_weights=(0.0, 1.0))[1]
    same, flipped = fits[False], fits[True]
    for key in ("alpha_at_4", "ridge", "rank_weight", "choice_spearman_at_4", "choice_prompts", "heldout_prompts"):
        assert same[key] == flipped[key], key
    assert flipped["alpha_at_4"] == 1.0 and flipped["choice_spearman_at_4"] > 0.9
    assert same["heldout_spearman_at_4"] > 0.9 > same["heldout_partial_reward_spearman_at_4"]
    # on the flipped prompts R_t = f0 still ranks f0 − 2·f1 positively (ρ ≈ 0.45), V ≈ f0 + 2·f1 negatively (≈ −0.6)
    assert flipped["heldout_spearman_at_4"] < 0 < flipped["heldout_partial_reward_spearman_at_4"]
    assert flipped["heldout_prompts"] + flipped["choice_prompts"] < 40


def test_anchored_heldout_figures_count_a_partial_reward_that_scores_a_prompt_all_alike():
    """An anchor that scores every prefix 0.0 at length 4 (a lexicon on a short prefix) ranks nothing there: each
    held-out prompt counts 0 in R_t's mean, the count is reported, and V is averaged over the same prompts."""
    states, rewards, groups, _ = _anchored_data(flip_heldout=False)

    def anchor(x, index, keys):
        return torch.tensor([0.0 if t == 4 else float(x[j, 0]) for j, (_, t) in enumerate(keys)])

    _, metrics = fit_anchored(states, rewards, groups, anchor, [4, 8], ridge=1e-3, seed=0)
    held = metrics["heldout_prompts"]
    assert metrics["heldout_partial_reward_spearman_at_4"] == 0.0
    assert metrics["heldout_partial_reward_constant_prompts_at_4"] == held
    assert metrics["heldout_partial_reward_constant_prompts_at_8"] == 0
    assert metrics["heldout_ranked_prompts_at_4"] == metrics["heldout_ranked_prompts_at_8"] == held
    assert metrics["heldout_constant_prompts_at_4"] == 0 < metrics["heldout_spearman_at_4"]
