"""`GrowingLayer`: transformers' `DynamicLayer` with room to grow.

Keys and values are views into a buffer with spare positions, so a decode step writes one position instead of
concatenating the whole cache (that copy was half the decode time at 128–256 rows on CPU), and row selection
gathers the buffer, room included. `growing_cache` swaps them into a fresh `DynamicCache`.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

ROOM = 64
"""Spare positions a `GrowingLayer` allocates past what it holds (one reallocation per 64 tokens at most)."""


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
        assert self.keys is not None and self.values is not None  # held() > 0: both set by the last update
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
        if self.buffers is None or not self.in_buffers() or held + new > self.buffers[0].shape[-2]:
            rows, heads, _, dim = key_states.shape
            keys = key_states.new_empty((rows, heads, held + new + self.room, dim))
            values = value_states.new_empty((rows, heads, held + new + self.room, value_states.shape[-1]))
            if held:
                assert self.keys is not None and self.values is not None  # held() > 0
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
        assert self.buffers is not None  # in_buffers() is False without buffers
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
        # transformers types this attribute as a layer class but only ever calls it with no arguments: a factory
        cache.layer_class_to_replicate = cast("type[DynamicLayer]", functools.partial(GrowingLayer, room))
    return cache
