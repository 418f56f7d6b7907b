"""Eq. 12 for a separate value model: every response prefix regressed on the finished response's reward.

Sequences are prompt + response token ids in the value model's vocabulary. Only response positions enter the
loss (position t holds V of the state [x, y_1..y_t]); prompt and padding positions are masked out.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from spi_align.hf.batches import pad_batch
from spi_align.values.model import ValueModel
from spi_align.values.train import eq12_targets


@dataclass
class Eq12Batch:
    """A right-padded batch: ids and attention mask (B, T), loss mask (B, T) over response tokens, targets (B,)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    targets: torch.Tensor

    def to(self, device: torch.device | str) -> Eq12Batch:
        return Eq12Batch(*(t.to(device) for t in (self.input_ids, self.attention_mask, self.loss_mask, self.targets)))


def eq12_batch(
    prompt_ids: Sequence[Sequence[int]], response_ids: Sequence[Sequence[int]], targets: torch.Tensor, pad_id: int
) -> Eq12Batch:
    """Pack (prompt, response) pairs: padding at the right, loss mask = 1 exactly on response positions."""
    pairs = list(zip(prompt_ids, response_ids, strict=True))
    ids, mask = pad_batch([list(p) + list(r) for p, r in pairs], pad_id, side="right")
    loss_mask = torch.zeros(ids.shape, dtype=torch.bool)
    for row, (p, r) in enumerate(pairs):
        loss_mask[row, len(p) : len(p) + len(r)] = True
    return Eq12Batch(ids, mask, loss_mask, targets.float())


def eq12_loss(values: torch.Tensor, batch: Eq12Batch) -> torch.Tensor:
    """Mean over response positions of (V(s_t) − r)²: one term per response token, as eq. 12 sums over t."""
    err = (values - batch.targets[:, None]).pow(2)
    return (err * batch.loss_mask).sum() / batch.loss_mask.sum().clamp(min=1)


@torch.no_grad()
def dataset_loss(
    model: ValueModel,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    targets: torch.Tensor,
    batch_size: int = 16,
) -> float:
    """Eq. 12's loss over a whole dataset (token-weighted mean), without training."""
    total, count = 0.0, 0
    for start in range(0, len(prompt_ids), batch_size):
        sl = slice(start, start + batch_size)
        batch = eq12_batch(prompt_ids[sl], response_ids[sl], targets[sl], model.pad_id).to(model.device)
        n = int(batch.loss_mask.sum())
        total += float(eq12_loss(model(batch.input_ids, batch.attention_mask), batch)) * n
        count += n
    return total / max(count, 1)


@torch.no_grad()
def response_values(
    model: ValueModel,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    batch_size: int = 16,
) -> list[torch.Tensor]:
    """V at every response position of each sequence, scored from scratch (no cache): (len_j,) each, on the CPU."""
    out: list[torch.Tensor] = []
    dummy = torch.zeros(len(prompt_ids))
    for start in range(0, len(prompt_ids), batch_size):
        sl = slice(start, start + batch_size)
        batch = eq12_batch(prompt_ids[sl], response_ids[sl], dummy[sl], model.pad_id).to(model.device)
        values = model(batch.input_ids, batch.attention_mask).float().cpu()
        out += [values[row, batch.loss_mask[row].cpu()] for row in range(values.shape[0])]
    return out


def train_value_model(
    model: ValueModel,
    prompt_ids: Sequence[Sequence[int]],
    response_ids: Sequence[Sequence[int]],
    rewards: Sequence[float],
    groups: Sequence[Hashable],
    *,
    centered: bool = True,
    epochs: int = 2,
    lr: float = 1e-4,
    head_lr: float | None = None,
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit `model` by eq. 12 with AdamW over shuffled mini-batches; returns the mean loss of each epoch.

    Trains the head and the backbone part `model.train_layers` selects; the head uses `head_lr` (default 10×lr:
    it starts from scratch while the backbone is pretrained). Gradients are clipped at norm 1.
    """
    if not prompt_ids:
        raise ValueError("no rollouts to train a value model on")
    targets = eq12_targets(rewards, groups, centered)
    params = model.trainable_parameters()
    head_ids = {id(p) for p in model.head.parameters()}
    groups_ = [
        {"params": [p for p in params if id(p) in head_ids], "lr": head_lr if head_lr is not None else 10 * lr},
        {"params": [p for p in params if id(p) not in head_ids], "lr": lr},
    ]
    opt = torch.optim.AdamW([g for g in groups_ if g["params"]], weight_decay=0.0)
    with torch.no_grad():
        model.head.bias.fill_(float(targets.mean()))
    gen = torch.Generator().manual_seed(seed)
    for module in (model.head, *model.trained_modules()):  # the frozen rest (maybe the policy's) stays in eval
        module.train()
    epoch_losses: list[float] = []
    try:
        for _ in range(epochs):
            total, count = 0.0, 0
            for idx in torch.randperm(len(prompt_ids), generator=gen).split(batch_size):
                rows = idx.tolist()
                batch = eq12_batch(
                    [prompt_ids[i] for i in rows], [response_ids[i] for i in rows], targets[idx], model.pad_id
                ).to(model.device)
                loss = eq12_loss(model(batch.input_ids, batch.attention_mask), batch)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                n = int(batch.loss_mask.sum())
                total, count = total + float(loss.detach()) * n, count + n
            epoch_losses.append(total / max(count, 1))
    finally:
        model.eval().requires_grad_(False)
    return {"epoch_losses": epoch_losses, "trained_parameters": sum(p.numel() for p in params)}
