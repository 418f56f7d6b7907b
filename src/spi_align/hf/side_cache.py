"""`SideCache`: a second model's own KV cache beside the policy's.

A `RowState` (kept in `Rows.extras`, reordered by `Rows.select`) for models that read the policy's own token ids
(value models, the implicit-reward pair, reward models): each prompt is prefilled once and fanned out to its rows,
then every call feeds only the response tokens sampled since the previous one, so scoring a search costs the tokens
generated, not prefix × steps. Models that read the policy's text through another tokenizer keep theirs in a
`TextSideCache` (`hf/text_cache.py`), built on this one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, Self, TypeVar

import torch
from transformers import DynamicCache

from spi_align.hf.batches import pad_batch


class CachedEncoder(Protocol):
    """What `SideCache` feeds: `BackboneRunner`, or a model that runs one (`ValueModel`, `CausalLM`)."""

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any | None = None) -> torch.Tensor:
        """Last-layer hidden states (B, T, H) of the new tokens."""
        ...

    def new_cache(self) -> DynamicCache:
        """An empty KV cache."""
        ...


@dataclass
class NewTokens:
    """The response tokens rows sampled since a `SideCache` last saw them, left-aligned in one block."""

    ids: torch.Tensor
    """(R, n) token ids; `pad_id` after each row's new tokens."""
    real: torch.Tensor
    """(R, n) True on each row's new tokens."""
    count: torch.Tensor
    """(R,) new tokens per row (0 for rows that stopped)."""
    length: torch.Tensor
    """(R,) each row's response length once they are fed."""


class SideCache:
    """Per-row state of models that read the policy's token ids beside it: one KV cache per model (models sharing
    one tokenizer share the attention mask and the count of tokens fed), and each model's last hidden state."""

    def __init__(
        self,
        encoders: Sequence[CachedEncoder],
        caches: list[Any],
        attention_mask: torch.Tensor,
        fed: torch.Tensor,
        last: list[torch.Tensor],
    ) -> None:
        self.encoders = list(encoders)
        self.caches = caches
        """One KV cache per encoder, R rows each."""
        self.attention_mask = attention_mask
        """(R, T) 1 for prompt and fed response tokens; 0 for padding and for gaps of rows with fewer new tokens."""
        self.fed = fed
        """(R,) response tokens already in the caches."""
        self.last = last
        """Per encoder, (R, H): the hidden state of each row's last fed token (it predicts the next one)."""

    @classmethod
    def prefill(
        cls,
        encoders: Sequence[CachedEncoder],
        prompt_ids: Sequence[Sequence[int]],
        prompt_index: torch.Tensor,
        pad_id: int,
        device: torch.device,
    ) -> Self:
        """Encode each prompt of the batch once (left-padded), then fan the caches out to the rows:
        row r continues prompt `prompt_index[r]`."""
        ids, mask = pad_batch(prompt_ids, pad_id, device=device)
        caches, last = [], []
        for encoder in encoders:
            cache = encoder.new_cache()
            last.append(encoder.hidden(ids, mask, cache)[:, -1])
            caches.append(cache)
        state = cls(encoders, caches, mask, torch.zeros_like(mask[:, 0]), last)
        state.read_prompts(prompt_ids)
        return state.select(prompt_index)

    def read_prompts(self, prompt_ids: Sequence[Sequence[int]]) -> None:
        """Called by `prefill` once the prompts are encoded (one row each), before they are fanned out: a subclass
        that keeps the ids it has read starts from them here."""

    def select(self, index: torch.Tensor) -> Self:
        """Rows `index` (repeats allowed); reorders the caches in place and returns self."""
        index = index.to(self.attention_mask.device)
        for cache in self.caches:
            cache.reorder_cache(index)
        self.attention_mask = self.attention_mask[index]
        self.fed = self.fed[index]
        self.last = [h[index] for h in self.last]
        return self

    def new_tokens(self, response: torch.Tensor, length: torch.Tensor, pad_id: int) -> NewTokens | None:
        """Each row's tokens of `response` (R, max_new_tokens) beyond those fed, up to `length`; None if none."""
        device = self.fed.device
        length = length.to(device)
        count = length - self.fed
        n = int(count.max()) if count.numel() else 0
        if n <= 0:
            return None
        offsets = torch.arange(n, device=device)
        real = offsets[None, :] < count[:, None]
        column = (self.fed[:, None] + offsets[None, :]).clamp(max=response.shape[1] - 1)
        ids = torch.where(real, response.to(device).gather(1, column), pad_id)
        return NewTokens(ids, real, count, length)

    def feed(self, new: NewTokens) -> list[torch.Tensor]:
        """Feed the new tokens to every encoder in one forward each; returns their hidden states (R, n, H).
        Rows with no new token keep their last hidden state."""
        out = self.feed_block(new.ids, new.real, new.count)
        self.fed = torch.maximum(self.fed, new.length)
        return out

    def feed_block(self, ids: torch.Tensor, real: torch.Tensor, count: torch.Tensor) -> list[torch.Tensor]:
        """Append one block of columns, `ids` (R, n) with `real` marking each row's first `count` (R,) entries, to
        every encoder's cache in one forward each; returns their hidden states (R, n, H) and sets `last` of the rows
        that received tokens (`fed` is the caller's)."""
        self.attention_mask = torch.cat([self.attention_mask, real.long()], dim=1)
        rows = torch.arange(ids.shape[0], device=ids.device)
        last_new = (count - 1).clamp(min=0)
        out = []
        for k, (encoder, cache) in enumerate(zip(self.encoders, self.caches, strict=True)):
            hidden = encoder.hidden(ids, self.attention_mask, cache)
            latest = hidden[rows, last_new].to(self.last[k].dtype)
            self.last[k] = torch.where((count > 0)[:, None], latest, self.last[k])
            out.append(hidden)
        return out


State = TypeVar("State")


def row_state(extras: dict[str, Any], key: str, create: Callable[[], State]) -> State:
    """The row state stored under `key` in `Rows.extras`, created (and stored) on first use."""
    if key not in extras:
        extras[key] = create()
    return extras[key]
