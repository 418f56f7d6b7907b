"""Remark 3.2's second idea: distil the guidance Σ_i γ V_i/β_i of all rounds into ONE head on the policy's
hidden states, so that the search's value cost stays flat however many rounds there are.

Linear heads need no training: their weighted sum is itself a linear head (`HeadStack` fuses it exactly, and
`distill` returns that head). MLP heads are distilled by regression: the student (one MLP or linear head) is fitted
to the stack's outputs on hidden states the stack will see — e.g. the rollouts' per-token features.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch

from spi_align.scoring.ranking import within_prompt_spearman
from spi_align.values.heads import HeadKind, HeadStack, ValueHead
from spi_align.values.train import regress


def fused_linear_head(stack: HeadStack) -> ValueHead:
    """The exact single linear head equal to a stack of linear heads (raw features, no standardisation)."""
    if stack.fused is None:
        raise ValueError("only a stack of linear heads fuses exactly; distil the others with `distill`")
    w, b = stack.fused
    head = ValueHead(int(w.shape[0]), "linear")
    with torch.no_grad():
        head.net.weight.copy_(w[None])  # type: ignore[union-attr]
        head.net.bias.fill_(float(b))  # type: ignore[union-attr]
    return head.eval()


def distill(
    stack: HeadStack,
    features: torch.Tensor,
    kind: HeadKind = "mlp",
    mlp_width: int = 256,
    epochs: int = 200,
    lr: float = 3e-3,
    batch_size: int = 256,
    seed: int = 0,
) -> ValueHead:
    """One head ≈ Σ_i γ V_i/β_i, fitted by mean squared error on `features` (N, H). Exact for linear stacks."""
    if stack.fused is not None and kind == "linear":
        return fused_linear_head(stack)
    x = features.float()
    with torch.no_grad():
        target = stack(x).float()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    student = ValueHead(x.shape[1], kind, mlp_width)
    student.mean.copy_(x.mean(0))
    student.scale.copy_(x.std(0).clamp(min=1e-6))
    # Targets are standardised for the fit and the output layer is rescaled after it, so any scale of γ/β works.
    t_mean, t_std = target.mean(), target.std().clamp(min=1e-8)
    y = (target - t_mean) / t_std
    regress(student, x, y, epochs, lr, batch_size, gen, cosine=True)
    last: torch.nn.Linear = student.net if kind == "linear" else student.net[-1]  # type: ignore[assignment,index]
    with torch.no_grad():
        last.weight.mul_(t_std)
        last.bias.mul_(t_std).add_(t_mean)
    return student.eval()


@torch.no_grad()
def rank_agreement(
    student: torch.nn.Module, stack: HeadStack, features: torch.Tensor, groups: Sequence[Hashable]
) -> float:
    """Mean within-group Spearman correlation between the student's and the stack's scores of the same candidates
    (a group = one prompt's candidates, which is all the search compares)."""
    x = features.float()
    return within_prompt_spearman(student(x).tolist(), stack(x).tolist(), list(groups))
