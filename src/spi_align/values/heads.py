"""Value heads on the policy's own last-layer hidden states (Remark 3.2: frozen backbone, one head per round).

A head maps a hidden state (..., H) to a scalar value. `HeadStack` holds the heads of all rounds with their
weights γ/β_i and returns Σ_i γ V_i/β_i; when every head is linear the sum collapses into one mat-vec.

Every guide that sums weighted values (`HeadStack`, the value models' `ValueModelGuide`, the anchored
`AnchoredGuide`, the reward guide's `WeightedSum`) checks its weights with `guidance_weights` and adds the terms
with `weighted_total`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from spi_align.core.records import report_term, reporting_terms

HeadKind = Literal["linear", "mlp"]


class ValueHead(nn.Module):
    """Standardise the features, then a linear map or a one-hidden-layer MLP to a scalar."""

    mean: torch.Tensor
    """(H,) feature means subtracted first (a buffer)."""
    scale: torch.Tensor
    """(H,) feature scales divided by then (a buffer)."""

    def __init__(self, hidden_size: int, kind: HeadKind = "linear", mlp_width: int = 256) -> None:
        super().__init__()
        self.kind = kind
        self.hidden_size = hidden_size
        self.mlp_width = mlp_width
        self.register_buffer("mean", torch.zeros(hidden_size))
        self.register_buffer("scale", torch.ones(hidden_size))
        if kind == "linear":
            self.net: nn.Module = nn.Linear(hidden_size, 1)
        else:
            self.net = nn.Sequential(nn.Linear(hidden_size, mlp_width), nn.GELU(), nn.Linear(mlp_width, 1))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.net((hidden.float() - self.mean) / self.scale).squeeze(-1)

    @property
    def output(self) -> nn.Linear:
        """The layer that gives the value: the whole net of a linear head, the MLP's last layer."""
        layer = self.net if self.kind == "linear" else list(self.net.children())[-1]
        if not isinstance(layer, nn.Linear):
            raise TypeError(f"a {self.kind} value head ends in {type(layer).__name__}, not a Linear layer")
        return layer

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """For a linear head: (w, b) with V(h) = h·w + b on raw features."""
        assert self.kind == "linear"
        lin = self.output
        w = lin.weight[0] / self.scale
        return w, lin.bias[0] - (self.mean * w).sum()

    def save(self, directory: str | Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, directory / "value_head.safetensors")
        spec = {"type": "value_head", "kind": self.kind, "hidden_size": self.hidden_size, "mlp_width": self.mlp_width}
        (directory / "value_head.json").write_text(json.dumps(spec, indent=2) + "\n")

    @classmethod
    def load(cls, directory: str | Path) -> ValueHead:
        directory = Path(directory)
        spec = json.loads((directory / "value_head.json").read_text())
        head = cls(spec["hidden_size"], spec["kind"], spec["mlp_width"])
        head.load_state_dict(load_file(directory / "value_head.safetensors"))
        return head.eval()


def guidance_weights(values: Sequence[object], weights: Sequence[float]) -> list[float]:
    """`weights` as floats, one per value (ValueError otherwise)."""
    if len(values) != len(weights):
        raise ValueError(f"one weight per value: {len(values)} values, {len(weights)} weights")
    return [float(w) for w in weights]


def weighted_total(terms: Iterable[tuple[float, torch.Tensor]], total: torch.Tensor) -> torch.Tensor:
    """`total` + Σ_j w_j · x_j over `terms` (w_j, x_j), each x_j moved to `total`'s device and to fp32, added in
    order."""
    for weight, values in terms:
        total = total + weight * values.to(total.device).float()
    return total


class HeadStack(nn.Module):
    """Σ_i weight_i · V_i(h) with weight_i = γ/β_i: the guidance of eq. 13 in one call."""

    def __init__(self, heads: Sequence[ValueHead], weights: Sequence[float]) -> None:
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.weights = guidance_weights(heads, weights)
        self.fused: tuple[torch.Tensor, torch.Tensor] | None = None
        """(w, b) with Σ_i weight_i V_i(h) = h·w + b, when every head is linear (one mat-vec per call); else None."""
        if heads and all(h.kind == "linear" for h in heads):
            with torch.no_grad():
                parts = [h.affine() for h in heads]
                w = sum(wt * p[0] for wt, p in zip(self.weights, parts, strict=True))
                b = sum(wt * p[1] for wt, p in zip(self.weights, parts, strict=True))
            assert isinstance(w, torch.Tensor) and isinstance(b, torch.Tensor)  # heads is not empty
            self.fused = (w, b)

    def __len__(self) -> int:
        return len(self.heads)

    @torch.no_grad()
    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Σ_i weight_i V_i(h); each V_i is also reported to a trace being recorded (`report_term`), a fused sum
        taken apart for it (extra mat-vecs, only then)."""
        values = None
        if self.fused is None or reporting_terms():
            values = [head.to(hidden.device)(hidden) for head in self.heads]
            for i, (weight, value) in enumerate(zip(self.weights, values, strict=True)):
                report_term(f"V_{i}", weight, value)
        if self.fused is not None:
            w, b = self.fused
            return hidden.float() @ w.to(hidden.device) + b.to(hidden.device)
        assert values is not None
        return weighted_total(
            zip(self.weights, values, strict=True), torch.zeros(hidden.shape[:-1], device=hidden.device)
        )
