"""Distilling Σ_i γ V_i/β_i of all rounds into one head: exact for linear heads, rank-faithful for MLP heads."""

from __future__ import annotations

import torch

from spi_align.values import HeadStack, ValueHead
from spi_align.values.distill import distill, fused_linear_head, rank_agreement

HIDDEN = 32
GROUP = 16  # W·K candidates of one prompt


def candidate_features(groups: int, seed: int) -> tuple[torch.Tensor, list[int]]:
    """Candidates cluster by prompt (as hidden states do): a prompt centre plus a smaller per-candidate part."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(groups, 1, HIDDEN, generator=gen) * 2 + 0.5
    x = centres + torch.randn(groups, GROUP, HIDDEN, generator=gen) * 0.7
    return x.reshape(-1, HIDDEN), [g for g in range(groups) for _ in range(GROUP)]


def random_heads(kind: str, seed: int) -> list[ValueHead]:
    heads = []
    for i in range(3):
        torch.manual_seed(seed + i)
        heads.append(ValueHead(HIDDEN, kind, mlp_width=64).eval())  # type: ignore[arg-type]
    return heads


def test_distilled_mlp_head_ranks_held_out_candidates_like_the_sum():
    stack = HeadStack(random_heads("mlp", 0), [1.0, 1 / 2, 1 / 2.5])  # β = [1, 2, 2.5] as in the paper
    train_x, _ = candidate_features(300, seed=1)
    test_x, groups = candidate_features(60, seed=2)
    student = distill(stack, train_x, kind="mlp", mlp_width=128, seed=0)
    rho = rank_agreement(student, stack, test_x, groups)
    one_round = rank_agreement(stack.heads[0], stack, test_x, groups)
    print(f"within-prompt Spearman, distilled vs Σ γV_i/β_i: {rho:.3f} (round 0 alone: {one_round:.3f})")
    assert rho > 0.9
    assert rho > one_round + 0.1  # one head stands in for all three, which no single round does


def test_linear_stack_distils_exactly_into_one_linear_head():
    stack = HeadStack(random_heads("linear", 5), [1.0, 0.5, 0.4])
    x, _ = candidate_features(4, seed=3)
    head = distill(stack, x, kind="linear")
    torch.testing.assert_close(head(x), stack(x), atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(fused_linear_head(stack)(x), stack(x), atol=1e-4, rtol=1e-5)


def test_distilled_head_keeps_the_scale_of_the_sum():
    stack = HeadStack(random_heads("mlp", 7), [10.0, 5.0, 4.0])
    train_x, _ = candidate_features(200, seed=4)
    test_x, _ = candidate_features(20, seed=5)
    student = distill(stack, train_x, kind="mlp", mlp_width=128, seed=0)
    target = stack(test_x)
    err = (student(test_x).detach() - target).abs().mean() / target.std()
    assert float(err) < 0.3
