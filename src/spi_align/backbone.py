"""Running transformers backbones on padded batches, and a second model's own KV cache beside the policy's.

The one home for what the policy and every model that reads beside it share (value models, the implicit-reward
pair, reward models, teacher-forced features):

- `pad_batch`: token-id lists → (ids, attention mask), padded on the left (prompts, so every row's last token is
  in the last column) or on the right (training batches), with `pad_token_id`;
- `positions_from_mask`: position ids that follow the attention mask, so left padding and the gaps of rows that
  received fewer new tokens do not shift positions;
- `BackboneRunner`: the backbone's forward on new tokens, with positions from the mask and the KV cache under
  whichever argument name this transformers version takes (`past_key_values`, later `cache`): probed once; a
  runner given a cost component bills the real new tokens of each forward to the cost being timed (`billed()`);
- `GrowingLayer`: transformers' `DynamicLayer` with room to grow: keys and values are views into a buffer with
  spare positions, so a decode step writes one position instead of concatenating the whole cache (that copy was
  half the decode time at 128–256 rows on CPU), and row selection gathers the buffer, room included;
- `SideCache`: a `RowState` (kept in `Rows.extras`, reordered by `Rows.select`) for models that read the policy's
  own token ids: each prompt is prefilled once and fanned out to its rows, then every call feeds only the response
  tokens sampled since the previous one, so scoring a search costs the tokens generated, not prefix × steps.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, TypeVar

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from spi_align.interfaces import billed

ROOM = 64
"""Spare positions a `GrowingLayer` allocates past what it holds (one reallocation per 64 tokens at most)."""


def pad_batch(
    seqs: Sequence[Sequence[int]],
    pad_id: int,
    side: Literal["left", "right"] = "left",
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists as one (B, T) batch: ids (`pad_id` where padded) and attention mask (1 on real tokens)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            cols = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
            ids[row, cols] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, cols] = 1
    return (ids, mask) if device is None else (ids.to(device), mask.to(device))


def pad_token_id(tokenizer: Any) -> int:
    """The id to pad a model's batches with: its tokenizer's pad token, else its end-of-sequence token, else 0.
    Padded positions are masked out, so any id in the vocabulary does."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return int(pad) if pad is not None else 0


def positions_from_mask(attention_mask: torch.Tensor, new_tokens: int | None = None) -> torch.Tensor:
    """Position ids (B, T) counting only the tokens the mask keeps (padding gets 0); with `new_tokens`, those of
    the last `new_tokens` columns (the ones being fed on top of a cache)."""
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return positions if new_tokens is None else positions[:, -new_tokens:]


class BackboneRunner:
    """A transformers backbone (no LM head) fed new tokens on top of an optional KV cache."""

    def __init__(self, module: torch.nn.Module, component: str | None = None) -> None:
        self.module = module
        self.component = component
        """The `Cost.forward_tokens` component its forwards are billed to (None: the caller counts them itself)."""
        params = set(inspect.signature(module.forward).parameters)
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        """The forward's KV-cache argument: transformers renamed `past_key_values` to `cache`."""
        self.takes_positions = "position_ids" in params
        self.takes_use_cache = "use_cache" in params

    def new_cache(self) -> DynamicCache:
        """An empty KV cache for this backbone; its full-attention layers are `GrowingLayer`s (sliding-window and
        other special layers stay as transformers builds them)."""
        return growing_cache(DynamicCache(config=self.module.config))

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any | None = None) -> torch.Tensor:
        """Last-layer hidden states (B, T, H) of the new tokens `input_ids`.

        `attention_mask` covers the cached tokens and the new ones (zeros anywhere: padding, gaps); positions follow
        it. Without `cache` nothing is cached. Never requests every layer's hidden states. The new tokens the mask
        keeps are billed to `component` of the cost being timed, if any.
        """
        cost = billed() if self.component is not None else None
        if cost is not None:
            cost.count_forward(self.component, int(attention_mask[:, -input_ids.shape[1] :].sum()))
        extra: dict[str, Any] = {}
        if self.takes_positions:
            extra["position_ids"] = positions_from_mask(attention_mask, input_ids.shape[1])
        if cache is not None:
            extra[self.cache_arg] = cache
        if self.takes_use_cache:
            extra["use_cache"] = cache is not None
        out = self.module(input_ids=input_ids, attention_mask=attention_mask, **extra)
        return out.last_hidden_state


class GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose `keys` / `values` are prefixes of larger buffers (`room` spare positions).

    `update` writes the new positions into the buffer and returns longer views of it; only when the buffer is full,
    or `keys` is no longer a prefix of it (after `crop` it still is; after a batch operation of the base class it is
    not), is a new buffer allocated and the cache copied once. `reorder_cache` gathers rows of the whole buffer, so
    the selected rows keep their room. Everything else (`crop`, lengths, masks) is `DynamicLayer`'s, on the views.
    """

    def __init__(self, room: int = ROOM, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.room = room
        self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None

    def held(self) -> int:
        """Positions the layer holds (0 before the first update)."""
        return 0 if self.keys is None or self.keys.numel() == 0 else self.keys.shape[-2]

    def in_buffers(self) -> bool:
        """True when `keys` / `values` are still prefixes of the buffers."""
        if self.buffers is None or self.held() == 0:
            return False
        keys, values = self.buffers
        return (
            self.keys.data_ptr() == keys.data_ptr()
            and self.values.data_ptr() == values.data_ptr()
            and self.keys.shape[0] == keys.shape[0]
            and self.keys.stride() == keys.stride()
        )

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        held, new = self.held(), key_states.shape[-2]
        if not self.in_buffers() or held + new > self.buffers[0].shape[-2]:
            rows, heads, _, dim = key_states.shape
            keys = key_states.new_empty((rows, heads, held + new + self.room, dim))
            values = value_states.new_empty((rows, heads, held + new + self.room, value_states.shape[-1]))
            if held:
                keys[..., :held, :] = self.keys
                values[..., :held, :] = self.values
            self.buffers = (keys, values)
        keys, values = self.buffers
        keys[..., held : held + new, :] = key_states
        values[..., held : held + new, :] = value_states
        self.keys, self.values = keys[..., : held + new, :], values[..., : held + new, :]
        return self.keys, self.values

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if not self.in_buffers():
            super().reorder_cache(beam_idx)
            return
        held = self.held()
        keys, values = (b.index_select(0, beam_idx.to(b.device)) for b in self.buffers)
        self.buffers = (keys, values)
        self.keys, self.values = keys[..., :held, :], values[..., :held, :]

    def reset(self) -> None:
        self.buffers = None
        super().reset()


def growing_cache(cache: DynamicCache, room: int = ROOM) -> DynamicCache:
    """`cache` with each plain `DynamicLayer` (none filled yet) replaced by a `GrowingLayer`."""
    cache.layers = [GrowingLayer(room) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:  # layers appended on first use
        cache.layer_class_to_replicate = functools.partial(GrowingLayer, room)
    return cache


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
    ) -> SideCache:
        """Encode each prompt of the batch once (left-padded), then fan the caches out to the rows:
        row r continues prompt `prompt_index[r]`."""
        ids, mask = pad_batch(prompt_ids, pad_id, device=device)
        caches, last = [], []
        for encoder in encoders:
            cache = encoder.new_cache()
            last.append(encoder.hidden(ids, mask, cache)[:, -1])
            caches.append(cache)
        fed = torch.zeros(len(prompt_ids), dtype=torch.long, device=device)
        return cls(encoders, caches, mask, fed, last).select(prompt_index)

    def select(self, index: torch.Tensor) -> SideCache:
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
        self.attention_mask = torch.cat([self.attention_mask, new.real.long()], dim=1)
        rows = torch.arange(new.ids.shape[0], device=new.ids.device)
        last_new = (new.count - 1).clamp(min=0)
        out = []
        for k, (encoder, cache) in enumerate(zip(self.encoders, self.caches, strict=True)):
            hidden = encoder.hidden(new.ids, self.attention_mask, cache)
            latest = hidden[rows, last_new].to(self.last[k].dtype)
            self.last[k] = torch.where((new.count > 0)[:, None], latest, self.last[k])
            out.append(hidden)
        self.fed = torch.maximum(self.fed, new.length)
        return out


State = TypeVar("State")


def row_state(extras: dict[str, Any], key: str, create: Callable[[], State]) -> State:
    """The row state stored under `key` in `Rows.extras`, created (and stored) on first use."""
    if key not in extras:
        extras[key] = create()
    return extras[key]
