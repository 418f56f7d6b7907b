"""Choosing the next parents among one prompt's candidates: top-W, diversity-first, or value-softmax sampling.

All functions take one prompt's candidate values (a 1-D tensor) and return indices into it.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import torch


def top_w(values: torch.Tensor, width: int) -> list[int]:
    """The `width` highest values (ties: lower index first)."""
    order = sorted(range(len(values)), key=lambda i: (-float(values[i]), i))
    return order[:width]


def diversity_first(values: torch.Tensor, keys: Sequence[Hashable], width: int) -> list[int]:
    """Identical candidates (same key) form one cluster; every cluster places its best member before any
    cluster places a second. Within a round, clusters go by their member's value, highest first."""
    clusters: dict[Hashable, list[int]] = {}
    for i in top_w(values, len(values)):
        clusters.setdefault(keys[i], []).append(i)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < width and any(len(m) > depth for m in clusters.values()):
        layer = [m[depth] for m in clusters.values() if len(m) > depth]
        chosen.extend(top_w_subset(values, layer))
        depth += 1
    return chosen[:width]


def top_w_subset(values: torch.Tensor, indices: Sequence[int]) -> list[int]:
    return sorted(indices, key=lambda i: (-float(values[i]), i))


def softmax_sample(values: torch.Tensor, width: int, temperature: float, generator: torch.Generator) -> list[int]:
    """Draw `width` distinct candidates with probability ∝ exp(value / temperature) (section 4.2.1)."""
    take = min(width, len(values))
    probs = torch.softmax(values.double().cpu() / temperature, dim=0)
    return torch.multinomial(probs, take, replacement=False, generator=generator).tolist()
