"""The numbers behind the guidance, worked by hand: Σ_i γ V_i/β_i (eq. 13) as `spi-k` builds it from a config,
fused linear heads with real (fitted) standardisation, and the reward head's folded standardisation."""

from __future__ import annotations

import pytest
import torch

from conftest import make_policy
from mocks.scorers import LengthScorer
from spi_align.config import Config, RewardTrainConfig, build_config
from spi_align.core.records import Cost, Prompt
from spi_align.scoring.reward_model import RewardModel
from spi_align.scoring.train_reward import train_reward_head_on_states
from spi_align.spi import ImprovedPolicy
from spi_align.values import HeadStack, ValueHead
from spi_align.values.kinds import make_value_kind
from spi_align.values.train import fit_head, token_dataset

PROMPTS = [Prompt("a", "Name three colours."), Prompt("b", "Hi"), Prompt("c", "Write a poem.")]


def linear_head(hidden_size: int, weights: dict[int, float], bias: float) -> ValueHead:
    """V(h) = Σ_j weights[j] h_j + bias (standardisation left at mean 0, scale 1)."""
    head = ValueHead(hidden_size, "linear")
    with torch.no_grad():
        head.net.weight.zero_()
        for j, w in weights.items():
            head.net.weight[0, j] = w
        head.net.bias.fill_(bias)
    return head.eval()


def test_spi_k_guidance_weights_each_round_by_gamma_over_its_beta(tiny_causal_lm, smol_tokenizer):
    cfg = build_config(Config, None, ["spi.betas=[1, 2, 2.5]", "spi.gamma=0.5", "spi.rounds=3", "spi.value=heads"])
    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=8)
    hidden = policy.hidden_size
    values = [
        linear_head(hidden, {0: 1.0}, 0.0),  # V_0(h) = h_0
        linear_head(hidden, {1: 4.0}, 1.0),  # V_1(h) = 4 h_1 + 1
        linear_head(hidden, {0: 10.0}, -2.0),  # V_2(h) = 10 h_0 - 2
    ]
    improved = ImprovedPolicy(policy, LengthScorer(), make_value_kind(policy, cfg.spi, "tiny", 0), values, cfg)
    rows = policy.start(PROMPTS, Cost())
    rows.hidden = torch.zeros(3, hidden)
    rows.hidden[0, 0] = 1.0  # h = e_0
    rows.hidden[1, 1] = 1.0  # h = e_1; row 2: h = 0

    def guidance(k: int) -> list[float]:
        return improved.method(f"spi-{k}").guidance(rows).tolist()  # what `spi-k` ranks rows by

    # γ/β = 0.5/1, 0.5/2, 0.5/2.5 = 0.5, 0.25, 0.2
    assert guidance(1) == pytest.approx([0.5, 0.0, 0.0])
    # 0.5 h_0 + 0.25 (4 h_1 + 1)
    assert guidance(2) == pytest.approx([0.75, 1.25, 0.25])
    # ... + 0.2 (10 h_0 - 2)
    assert guidance(3) == pytest.approx([0.5 + 0.25 + 1.6, 1.25 - 0.4, 0.25 - 0.4])


def fitted_heads(hidden: int, count: int) -> tuple[list[ValueHead], torch.Tensor]:
    """Linear heads fitted by eq. 12 on features far from mean 0 / scale 1, and a batch of such features."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(300, hidden, generator=gen) * torch.linspace(0.5, 8.0, hidden) + torch.linspace(-20, 30, hidden)
    heads = []
    for i in range(count):
        data = token_dataset([x], [0.0], ["p"], centered=False)
        data.targets = x @ torch.randn(hidden, generator=gen) + 3.0 * i
        heads.append(fit_head(data, "linear", ridge=1.0))
    return heads, x[:20]


def test_fused_heads_equal_the_sum_of_standardised_heads():
    heads, h = fitted_heads(8, 3)
    assert all(head.mean.abs().max() > 10 and (head.scale - 1).abs().max() > 1 for head in heads)
    weights = [1.0, 0.5, 0.4]
    stack = HeadStack(heads, weights)
    assert stack.fused is not None
    with torch.no_grad():
        unfused = sum(w * head(h) for w, head in zip(weights, heads, strict=True))
        for head in heads:  # V(h) = h·w + b on raw features
            w, b = head.affine()
            torch.testing.assert_close(h @ w + b, head(h), rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(stack(h), unfused, rtol=1e-4, atol=1e-3)
    assert unfused.std() > 1  # the values differ across rows: a constant offset would show


def test_reward_head_reads_raw_states_whatever_their_offset_and_scale(tiny_backbone, smol_tokenizer):
    """The Bradley–Terry head is fitted on standardised states and folded into w·h on raw ones: fitting on 3·s + c
    must then give 3·s + c the same rewards as the first fit gives s, up to one constant."""
    gen = torch.Generator().manual_seed(0)
    states = torch.randn(24, 32, generator=gen)
    groups = [f"p{i // 4}" for i in range(24)]
    labels = torch.randn(24, generator=gen).tolist()
    offset = torch.linspace(-5.0, 5.0, 32)
    cfg = RewardTrainConfig(epochs=60)
    first, second = RewardModel(tiny_backbone, smol_tokenizer), RewardModel(tiny_backbone, smol_tokenizer)
    train_reward_head_on_states(first, states, groups, labels, cfg, seed=0)
    train_reward_head_on_states(second, 3 * states + offset, groups, labels, cfg, seed=0)
    with torch.no_grad():
        r1 = first.head(states).squeeze(-1)
        r2 = second.head(3 * states + offset).squeeze(-1)
    assert r1.std() > 0.1
    # Bradley–Terry fixes a reward up to a constant and the head keeps no bias (a transformers score layer has
    # none), so the two fits agree once each is centred
    torch.testing.assert_close(r2 - r2.mean(), r1 - r1.mean(), rtol=1e-3, atol=1e-3)
