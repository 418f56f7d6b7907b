"""Eq. 12: regress V(s_t) on the finished response's reward for every response prefix (ranking: `scoring/ranking.py`).

Only differences between candidates of one prompt matter to the search, so targets may be centred per prompt
(`centered=True`), which removes the between-prompt variance that dominates plain regression.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from spi_align.scoring.ranking import centred
from spi_align.values.heads import HeadKind, ValueHead


@dataclass
class TokenDataset:
    """One row per response token: features, eq. 12 target, rollout index and group (prompt) index."""

    features: torch.Tensor
    targets: torch.Tensor
    rollout: torch.Tensor
    group: torch.Tensor


def eq12_targets(rewards: Sequence[float], groups: Sequence[Hashable], centered: bool) -> torch.Tensor:
    """Per-rollout regression target: r(x, y), or r(x, y) minus the mean reward of the same prompt's rollouts."""
    r = torch.tensor(rewards, dtype=torch.float32)
    if not centered:
        return r
    return centred(r, groups)


def token_dataset(
    hidden: Sequence[torch.Tensor], rewards: Sequence[float], groups: Sequence[Hashable], centered: bool
) -> TokenDataset:
    """Expand rollouts into per-token rows; every prefix state of rollout j gets rollout j's target."""
    targets = eq12_targets(rewards, groups, centered)
    keys = {g: i for i, g in enumerate(dict.fromkeys(groups))}
    lengths = torch.tensor([h.shape[0] for h in hidden])
    rollout = torch.arange(len(hidden)).repeat_interleave(lengths)
    return TokenDataset(
        features=torch.cat(list(hidden)) if hidden else torch.zeros(0, 0),
        targets=targets[rollout],
        rollout=rollout,
        group=torch.tensor([keys[g] for g in groups])[rollout],
    )


def fit_head(
    data: TokenDataset, kind: HeadKind = "linear", ridge: float = 1.0, epochs: int = 30, lr: float = 1e-3, seed: int = 0
) -> ValueHead:
    """Fit a head minimising eq. 12's squared error: closed-form ridge for linear, Adam for the MLP."""
    x, y = data.features.float(), data.targets.float()
    head = ValueHead(x.shape[1], kind)
    mean, scale = x.mean(0), x.std(0).clamp(min=1e-6)
    head.mean.copy_(mean)
    head.scale.copy_(scale)
    z = (x - mean) / scale
    if kind == "linear":
        y_mean = y.mean()
        gram = z.T @ z + ridge * torch.eye(z.shape[1])
        w = torch.linalg.solve(gram, z.T @ (y - y_mean))
        lin = head.output
        with torch.no_grad():
            lin.weight.copy_(w[None])
            lin.bias.fill_(float(y_mean))
        return head.eval()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = ValueHead(x.shape[1], kind)
    head.mean.copy_(mean)
    head.scale.copy_(scale)
    regress(head, x, y, epochs, lr, batch_size=2048, generator=gen, weight_decay=1e-2)
    return head.eval()


def regress(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    generator: torch.Generator,
    weight_decay: float = 0.0,
) -> None:
    """Minimise mean squared error of model(x) against y in shuffled mini-batches (AdamW, constant rate)."""
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(epochs):
        for idx in torch.randperm(len(y), generator=generator).split(batch_size):
            loss = torch.nn.functional.mse_loss(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def prefix_values(head: torch.nn.Module, hidden: Sequence[torch.Tensor], prefix: int | None) -> list[float]:
    """V at prefix length `prefix` (or the full response when None / longer than it) for each rollout."""
    out = []
    with torch.no_grad():
        for h in hidden:
            t = h.shape[0] if prefix is None else min(prefix, h.shape[0])
            out.append(float(head(h[t - 1])) if t > 0 else 0.0)
    return out
