"""Preference pairs from a labeller, the Bradley–Terry loss, and the head it trains."""

from __future__ import annotations

import math

import pytest
import torch

from spi_align.config import RewardTrainConfig
from spi_align.core.errors import SpiError
from spi_align.core.records import Prompt
from spi_align.data.prompts import heldout_prompts
from spi_align.scoring.reward_model import RewardModel
from spi_align.scoring.train_reward import (
    bradley_terry_loss,
    preference_pairs,
    train_reward_head,
    train_reward_head_on_states,
)


def test_pairs_are_every_ordered_pair_or_best_against_worst_then_inwards_skipping_ties():
    groups = ["p", "p", "p", "p", "q", "q"]
    labels = [4.0, 1.0, 3.0, 2.0, 5.0, 5.0]
    # p: every two samples with different labels, better first; q: a tie, no pair
    assert sorted(preference_pairs(groups, labels)) == [(0, 1), (0, 2), (0, 3), (2, 1), (2, 3), (3, 1)]
    # p ranked 0, 2, 3, 1 -> (best 0 vs worst 1), (2 vs 3); a third would need a fifth sample
    assert preference_pairs(groups, labels, per_prompt=3) == [(0, 1), (2, 3)]
    assert preference_pairs(groups, labels, per_prompt=1) == [(0, 1)]


def test_bradley_terry_loss_by_hand():
    loss = bradley_terry_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))
    expected = (-math.log(1 / (1 + math.exp(-2))) - math.log(1 / (1 + math.exp(1)))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_head_learns_to_prefer_the_labellers_choice(tiny_backbone, smol_tokenizer):
    model = RewardModel(tiny_backbone, smol_tokenizer)
    prompts = [Prompt(str(i), f"Tell me something, number {i}.") for i in range(10)]
    # chosen answers are long, rejected ones short: a signal the last-token state can carry
    pairs = [(p, "yes " * (12 + i % 5), "no") for i, p in enumerate(prompts)]
    metrics = train_reward_head(model, pairs, RewardTrainConfig(epochs=300), seed=0)
    assert metrics["train_accuracy"] == 1.0
    assert metrics["weight_decay"] in RewardTrainConfig().weight_decay
    with torch.no_grad():
        question = Prompt("q", "Something new?")
        r = model(**model.tokenize([model.format(question, "yes " * 14), model.format(question, "no")]))
    assert r[0] > r[1]


def test_no_pairs_is_one_clear_error(tiny_backbone, smol_tokenizer):
    with pytest.raises(SpiError, match="no preference pairs"):
        train_reward_head(RewardModel(tiny_backbone, smol_tokenizer), [], RewardTrainConfig())


def test_the_weight_decay_is_chosen_without_the_heldout_prompts_and_both_heldout_figures_read_them(
    tiny_backbone, smol_tokenizer
):
    """Labels follow w·s on training prompts. Rewriting the held-out prompts (labels reversed, states rescaled) must
    change no choice (the decay and its accuracies come from the choice prompts, the standardisation from the pairs
    fitted on); and the held-out accuracy and Spearman, read by one probe on the same prompts, then agree in sign."""
    size = tiny_backbone.config.hidden_size
    gen = torch.Generator().manual_seed(0)
    groups = [f"p{i // 4}" for i in range(120)]
    states = torch.randn(120, size, generator=gen)
    w = torch.randn(size, generator=gen)
    held = torch.tensor([g in heldout_prompts(groups, seed=0) for g in groups])
    labels = states @ w
    flipped_states = torch.where(held[:, None], 100 * states, states)
    flipped_labels = torch.where(held, -labels, labels)
    cfg = RewardTrainConfig(epochs=40, weight_decay=[0.01, 1.0, 30.0])
    same = train_reward_head_on_states(RewardModel(tiny_backbone, smol_tokenizer), states, groups, labels.tolist(), cfg)
    flipped = train_reward_head_on_states(
        RewardModel(tiny_backbone, smol_tokenizer), flipped_states, groups, flipped_labels.tolist(), cfg
    )
    for key in ("weight_decay", "choice_accuracy", "choice_accuracy_by_weight_decay", "heldout_pairs"):
        assert same[key] == flipped[key], key
    assert set(same["choice_accuracy_by_weight_decay"]) == {"0.01", "1.0", "30.0"}
    assert same["heldout_pairs"] > 0 and same["heldout_constant_prompts"] == 0
    assert same["heldout_ranked_prompts"] == flipped["heldout_ranked_prompts"] == len(heldout_prompts(groups, seed=0))
    assert same["heldout_accuracy"] > 0.7 and same["heldout_spearman_with_labeller"] > 0.5
    assert flipped["heldout_accuracy"] < 0.3 and flipped["heldout_spearman_with_labeller"] < -0.5


def test_the_head_fitted_is_the_one_its_training_accuracy_describes_and_has_no_offset(tiny_backbone, smol_tokenizer):
    """The model's head after the fit scores the pairs as `train_accuracy` says, and has bias 0: Bradley–Terry
    fixes no offset and the transformers score layer it is saved as has none."""
    gen = torch.Generator().manual_seed(1)
    states = torch.randn(60, tiny_backbone.config.hidden_size, generator=gen)
    groups = [f"p{i // 6}" for i in range(60)]
    labels = (states @ torch.randn(states.shape[1], generator=gen) + torch.randn(60, generator=gen)).tolist()
    model = RewardModel(tiny_backbone, smol_tokenizer)
    metrics = train_reward_head_on_states(model, states, groups, labels, RewardTrainConfig(epochs=50))
    with torch.no_grad():
        rewards = model.head(states).squeeze(-1)
    pairs = preference_pairs(groups, labels)
    assert float(model.head.bias) == 0.0
    assert sum(bool(rewards[a] > rewards[b]) for a, b in pairs) / len(pairs) == pytest.approx(metrics["train_accuracy"])
    assert metrics["train_accuracy"] > 0.8
