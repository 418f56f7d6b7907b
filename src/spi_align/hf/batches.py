"""Running transformers backbones on padded batches: the one home for what the policy and every model that reads
beside it share (value models, the implicit-reward pair, reward models, teacher-forced features).

- `pad_batch`: token-id lists → (ids, attention mask), padded on the left (prompts, so every row's last token is
  in the last column) or on the right (training batches), with `pad_token_id` (torch's `pad_sequence`: callers
  hold token ids and a pad id, not always the tokenizer that `tokenizer.pad` would need);
- `positions_from_mask`: position ids that follow the attention mask, so left padding and the gaps of rows that
  received fewer new tokens do not shift positions;
- `BackboneRunner`: the backbone's forward on new tokens, with positions from the mask and the KV cache under
  whichever argument name this transformers version takes (`past_key_values`, later `cache`): probed once; a
  runner given a cost component bills the real new tokens of each forward to the cost being timed (`billed()`).
  Its caches are `hf/kv_cache.py`'s growing ones. A runner built with `embeds=True` is fed hidden states instead of
  token ids (`inputs_embeds`): the top layers of a model run on the states the layers below gave;
- `LayerTap`: the states one layer of a backbone receives, captured during the forwards a caller arms it for (the
  policy's own, which then hand a model running the layers from there up the states it needs without another
  forward), or the backbone run only up to that layer (`below`: the layers from it up never run).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal

import torch
from torch.nn.utils.rnn import pad_sequence
from transformers import DynamicCache, PreTrainedModel

from spi_align.core.records import billed
from spi_align.hf.kv_cache import growing_cache
from spi_align.hf.models import layer_stack


def pad_batch(
    seqs: Sequence[Sequence[int]],
    pad_id: int,
    side: Literal["left", "right"] = "left",
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-id lists as one (B, T) batch: ids (`pad_id` where padded) and attention mask (1 on real tokens)."""
    rows = [torch.tensor(list(seq), dtype=torch.long) for seq in seqs]
    ids = pad_sequence(rows, batch_first=True, padding_value=pad_id, padding_side=side)
    mask = pad_sequence([torch.ones_like(r) for r in rows], batch_first=True, padding_value=0, padding_side=side)
    return (ids, mask) if device is None else (ids.to(device), mask.to(device))


def pad_token_id(tokenizer: Any, fallback: int | None = None) -> int:
    """The id to pad a model's batches with: its tokenizer's pad token, else `fallback` (a policy passes its
    end-of-turn id), else its end-of-sequence token, else 0. Padded positions are masked out, so any id in the
    vocabulary does."""
    for pad in (tokenizer.pad_token_id, fallback, tokenizer.eos_token_id):
        if pad is not None:
            return int(pad)
    return 0


def positions_from_mask(attention_mask: torch.Tensor, new_tokens: int | None = None) -> torch.Tensor:
    """Position ids (B, T) counting only the tokens the mask keeps (padding gets 0); with `new_tokens`, those of
    the last `new_tokens` columns (the ones being fed on top of a cache)."""
    positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
    return positions if new_tokens is None else positions[:, -new_tokens:]


class BackboneRunner:
    """A transformers backbone (no LM head) fed new tokens on top of an optional KV cache."""

    def __init__(self, module: PreTrainedModel, component: str | None = None, embeds: bool = False) -> None:
        self.module = module
        self.component = component
        """The `Cost.forward_tokens` component its forwards are billed to (None: the caller counts them itself)."""
        self.feeds = "inputs_embeds" if embeds else "input_ids"
        """What `hidden` is fed: token ids (B, T), or with `embeds` hidden states (B, T, H) in the module's dtype."""
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
        if self.component is not None and (cost := billed()) is not None:
            cost.count_forward(self.component, int(attention_mask[:, -input_ids.shape[1] :].sum()))
        extra: dict[str, Any] = {}
        if self.takes_positions:
            extra["position_ids"] = positions_from_mask(attention_mask, input_ids.shape[1])
        if cache is not None:
            extra[self.cache_arg] = cache
        if self.takes_use_cache:
            extra["use_cache"] = cache is not None
        out = self.module(**{self.feeds: input_ids}, attention_mask=attention_mask, **extra)
        return out.last_hidden_state


class _Reached(Exception):
    """Raised by a `LayerTap` that stops a forward at its layer."""


class LayerTap:
    """The hidden states (B, T, H) that layer `index` of a backbone's stack receives (the output of the layers below
    it), captured by a forward pre-hook during the forwards run inside `armed()`; other forwards of the backbone pass
    untouched (the hook returns at once)."""

    def __init__(self, backbone: torch.nn.Module, index: int) -> None:
        stack = layer_stack(backbone)
        if not 0 <= index < len(stack):
            raise ValueError(f"layer {index} of a stack of {len(stack)}")
        self.index = index
        self.layers = len(stack)
        self._armed = self._stop = False
        self._states: torch.Tensor | None = None
        self._handle = stack[index].register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if self._armed:
            self._states = args[0] if args else kwargs["hidden_states"]
            if self._stop:
                raise _Reached

    @contextmanager
    def armed(self) -> Iterator[None]:
        """Capture the layer's input during the block (`take` reads the last one)."""
        self._armed = True
        try:
            yield
        finally:
            self._armed = False

    def take(self) -> torch.Tensor:
        """The states captured by the last armed forward (then forgotten)."""
        if self._states is None:
            raise RuntimeError(f"no forward reached layer {self.index} while armed")
        states, self._states = self._states, None
        return states

    def below(self, forward: Callable[[], Any]) -> torch.Tensor:
        """Run `forward` (a forward of the backbone) only as far as the layer: the states it receives; the layers
        from it up never run."""
        self._stop = True
        try:
            with self.armed():
                forward()
        except _Reached:
            pass
        finally:
            self._stop = False
        return self.take()

    def remove(self) -> None:
        """Take the hook off the layer."""
        self._handle.remove()
