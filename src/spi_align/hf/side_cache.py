"""`SideCache`: a second model's own KV cache beside the policy's.

A `RowState` (kept in `Rows.extras`, reordered by `Rows.select`) for models that read the policy's own token ids
(value models, the implicit-reward pair, reward models): each prompt is prefilled once and fanned out to its rows,
then every call feeds only the response tokens sampled since the previous one, so scoring a search costs the tokens
generated, not prefix × steps. Models that read the policy's text through another tokenizer keep theirs in a
`TextSideCache` (`hf/text_cache.py`), built on this one.

`TappedStates` is what a model that shares the policy's lower layers reads instead of token ids: the states one layer
of the policy's backbone received (`hf.batches.LayerTap`) for the tokens the policy fed since the model last took
them, kept in the rows by the policy itself (`policy/hf.py`, `HFPolicy.tap_layer`), so the model runs only the layers
from there up, on its own cache (`scoring/top_layers.py`).
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

    def peek_block(self, ids: torch.Tensor, real: torch.Tensor) -> list[torch.Tensor]:
        """Like `feed_block` (`real` (R, n) marks each row's first entries), but the state is left as it was: the
        caches are cropped back after the forward (a view, no copy) and the mask and last states kept; returns each
        encoder's hidden states (R, n, H)."""
        mask, last = self.attention_mask, list(self.last)
        out = self.feed_block(ids, real, real.sum(1))
        for cache in self.caches:
            cache.crop(-ids.shape[1])
        self.attention_mask, self.last = mask, last
        return out


TAPPED = "tapped_states"
"""The key of `TappedStates` in `Rows.extras`."""


class TappedStates:
    """Per-row states (`RowState`) of the tapped layer for the tokens the policy fed since a reader last took them.

    `prompts` is the prompts' block (one row per prompt, left-padded, as the policy prefilled them), kept until taken,
    so a reader encodes each prompt once and fans its own cache out to the rows (`Rows.prompt_index`); `add` appends
    the block of each later forward (sampled tokens, end tokens that end rows) with the rows that really fed a token;
    `peeked` is the last end-token peek's states (the peek is cropped back, so it never joins the blocks). Selecting
    rows reorders the blocks and forgets the peek (the policy peeks the new rows again)."""

    def __init__(self, source: object, prompts: torch.Tensor, prompt_mask: torch.Tensor) -> None:
        self.source = source
        """What tapped the states (the policy's `LayerTap`): a reader checks the rows carry its layer's states."""
        self.prompts: tuple[torch.Tensor, torch.Tensor] | None = (prompts, prompt_mask)
        self.blocks: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.peeked: tuple[torch.Tensor, torch.Tensor] | None = None
        """(states (R, H) of the end token, (R,) the rows fed it) of the peek at the rows as they are, if any."""

    def add(self, states: torch.Tensor, real: torch.Tensor) -> None:
        """Append one forward's states (R, n, H) of the rows `real` (R,) that fed tokens (a decode step: n = 1)."""
        self.blocks.append((states, real[:, None].expand(-1, states.shape[1])))
        self.peeked = None

    def select(self, index: torch.Tensor) -> Self:
        """Rows `index` (repeats allowed); the prompts' block stays one row per prompt."""
        self.blocks = [(states[index], real[index]) for states, real in self.blocks]
        self.peeked = None
        return self

    def take_prompts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(states (P, T, H), attention mask (P, T)) of the prompts, handed over once."""
        if self.prompts is None:
            raise RuntimeError("the prompts' states were already taken")
        prompts, self.prompts = self.prompts, None
        return prompts

    def take(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The blocks added since the last call as one left-aligned block: (states (R, n, H), real (R, n), each row's
        tokens first, in order), then forgotten; None if no row fed a token."""
        if not self.blocks:
            return None
        states = torch.cat([s for s, _ in self.blocks], dim=1)
        real = torch.cat([r for _, r in self.blocks], dim=1)
        self.blocks = []
        n = int(real.sum(1).max())
        if n == 0:
            return None
        order = torch.argsort((~real).to(torch.int8), dim=1, stable=True)[:, :n]
        return states.gather(1, order[..., None].expand(-1, -1, states.shape[-1])), real.gather(1, order)


State = TypeVar("State")


def row_state(extras: dict[str, Any], key: str, create: Callable[[], State]) -> State:
    """The row state stored under `key` in `Rows.extras`, created (and stored) on first use."""
    if key not in extras:
        extras[key] = create()
    return extras[key]
