"""Preference pairs from a labeller, the Bradley–Terry loss, and the head it trains."""

from __future__ import annotations

import math

import pytest
import torch

from mocks.scorers import LengthScorer
from spi_align.config import RewardTrainConfig
from spi_align.errors import SpiError
from spi_align.interfaces import Prompt
from spi_align.scoring.reward_model import RewardModel
from spi_align.scoring.train_reward import bradley_terry_loss, make_pairs, train_reward_head


def test_pairs_are_best_against_worst_then_inwards_skipping_ties_and_duplicates():
    p, q = Prompt("p", "x"), Prompt("q", "y")
    cands = [["aaaa", "a", "aaa", "aa", "a"], ["bb", "cc"]]
    pairs = make_pairs([p, q], cands, LengthScorer(), per_prompt=3)
    # p: unique candidates by length 4, 3, 2, 1 -> (4 vs 1), (3 vs 2); q: a tie, no pair
    assert [(x.id, c, r) for x, c, r in pairs] == [("p", "aaaa", "a"), ("p", "aaa", "aa")]


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
        r = model(**model.tokenize([model.format("Something new?", "yes " * 14), model.format("Something new?", "no")]))
    assert r[0] > r[1]


def test_no_pairs_is_one_clear_error(tiny_backbone, smol_tokenizer):
    with pytest.raises(SpiError, match="no preference pairs"):
        train_reward_head(RewardModel(tiny_backbone, smol_tokenizer), [], RewardTrainConfig())
