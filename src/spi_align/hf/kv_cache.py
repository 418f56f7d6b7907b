"""`GrowingLayer` and `GrowingSlidingLayer`: transformers' `DynamicLayer` and `DynamicSlidingWindowLayer` with room
to grow.

Keys and values are views into a buffer with spare positions, so a decode step writes one position instead of
concatenating the whole cache (that copy was half the decode time at 128–256 rows on CPU), and row selection
gathers the buffer, room included. `growing_cache` swaps them into a fresh `DynamicCache`.

Sliding-window layers (5 layers of 6 on Gemma 3) need their own class for two reasons. transformers' layer rebuilds
its window with `torch.cat` at every forward, a copy of the whole window per layer per step, decode and end-token
peek alike. And once a row is longer than the window it has dropped the positions a `crop` would need, so the
end-token peek (feed one token, crop it back) raised there. `GrowingSlidingLayer` keeps a buffer holding the
window and the last update, so the last update can always be cropped, with a view.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

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


class GrowingSlidingLayer(DynamicSlidingWindowLayer):
    """A `DynamicSlidingWindowLayer` whose window is a view into a buffer with `room` spare positions.

    The base class keeps the last `sliding_window - 1` positions (the visible window) and, at each update, returns
    the window followed by the new positions, then drops what falls out of the window. This layer returns the same
    tensors, as views of its buffer: `update` writes the new positions after the ones held, and only when the buffer
    is full is the visible window copied to the front of a new one (one copy per `room` positions, not one per
    step). The buffer always holds the window as it was before the last update, so `crop(-n)` of up to the last
    update's positions is a view, past the window length too (the base class raises there unless it recorded its
    past; this layer needs no recording). `reorder_cache` gathers the rows of the window and the room after it
    (a crop must then not reach back past the reorder). `keys` / `values` are the visible window as in the base
    class, whose masks and lengths (`cumulative_length`) are used unchanged; after a batch operation of the base
    class the next update copies into a new buffer.
    """

    def __init__(self, sliding_window: int, room: int = ROOM, **kwargs: Any) -> None:
        super().__init__(sliding_window=sliding_window, **kwargs)
        self.room = room
        self.buffers: tuple[torch.Tensor, torch.Tensor] | None = None
        self.end = 0
        """Positions written in the buffers (the window ends there)."""

    def visible(self) -> int:
        """Positions of the window the next update sees: the last `sliding_window - 1` (fewer at first)."""
        return min(self.cumulative_length, self.sliding_window - 1)

    def in_buffers(self) -> bool:
        """True when `keys` / `values` are still the window of the buffers."""
        held = self.visible()
        if self.buffers is None or held == 0 or self.keys is None or self.values is None:
            return False
        keys, values = (b[..., self.end - held : self.end, :] for b in self.buffers)
        return all(
            mine.data_ptr() == theirs.data_ptr() and mine.shape == theirs.shape and mine.stride() == theirs.stride()
            for mine, theirs in ((self.keys, keys), (self.values, values))
        )

    def _show(self) -> None:
        """Point `keys` / `values` at the window of the buffers."""
        assert self.buffers is not None  # called once the buffers are written
        keys, values = self.buffers
        held = self.visible()
        self.keys, self.values = keys[..., self.end - held : self.end, :], values[..., self.end - held : self.end, :]

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        held, new = self.visible(), key_states.shape[-2]
        if not self.in_buffers() or self.buffers is None or self.end + new > self.buffers[0].shape[-2]:
            rows, heads, _, dim = key_states.shape
            keys = key_states.new_empty((rows, heads, held + new + self.room, dim))
            values = value_states.new_empty((rows, heads, held + new + self.room, value_states.shape[-1]))
            if held:
                assert self.keys is not None and self.values is not None  # held > 0: set by an earlier update
                keys[..., :held, :] = self.keys[..., -held:, :]
                values[..., :held, :] = self.values[..., -held:, :]
            self.buffers, self.end = (keys, values), held
        keys, values = self.buffers
        keys[..., self.end : self.end + new, :] = key_states
        values[..., self.end : self.end + new, :] = value_states
        self.end += new
        self.cumulative_length += new
        self._show()
        return keys[..., self.end - held - new : self.end, :], values[..., self.end - held - new : self.end, :]

    def crop(self, tokens_to_remove: int) -> None:
        """Remove the last `-tokens_to_remove` positions (a negative count, as transformers now asks); a view as long
        as the buffer still holds the window before them (always for the last update's positions)."""
        if tokens_to_remove > 0 or not self.in_buffers():
            super().crop(tokens_to_remove)
            return
        n = -tokens_to_remove
        if n == 0:
            return
        length = self.cumulative_length - n
        if length < 0 or self.end - n < min(length, self.sliding_window - 1):
            raise ValueError(f"cannot crop {n} positions: the window's buffer no longer holds what precedes them")
        self.end -= n
        self.cumulative_length = length
        self._show()

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        if not self.in_buffers():
            super().reorder_cache(beam_idx)
            return
        assert self.buffers is not None  # in_buffers() is False without buffers
        start = self.end - self.visible()  # the window and the room after it: what precedes it is not needed
        keys, values = (b[..., start:, :].index_select(0, beam_idx.to(b.device)) for b in self.buffers)
        self.buffers, self.end = (keys, values), self.end - start
        self._show()

    def reset(self) -> None:
        self.buffers, self.end = None, 0
        super().reset()


def growing_cache(cache: DynamicCache, room: int = ROOM) -> DynamicCache:
    """`cache` with each plain `DynamicLayer` and `DynamicSlidingWindowLayer` (none filled yet) replaced by a
    `GrowingLayer` / `GrowingSlidingLayer`."""
    cache.layers = [_growing(layer, room) for layer in cache.layers]
    if getattr(cache, "layer_class_to_replicate", None) is DynamicLayer:  # layers appended on first use
        # transformers types this attribute as a layer class but only ever calls it with no arguments: a factory
        cache.layer_class_to_replicate = cast("type[DynamicLayer]", functools.partial(GrowingLayer, room))
    return cache


def _growing(layer: Any, room: int) -> Any:
    if type(layer) is DynamicLayer:
        return GrowingLayer(room)
    if type(layer) is DynamicSlidingWindowLayer:
        return GrowingSlidingLayer(layer.sliding_window, room)
    return layer
