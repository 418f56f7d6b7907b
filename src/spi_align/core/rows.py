"""`Rows`: a batch of partial responses that share one KV cache, one row per candidate, and the generation settings
(`GenerationSettings`) they are sampled with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import torch
from transformers import Cache

from spi_align.core.records import Prompt


class GenerationSettings(Protocol):
    """How a policy samples tokens (what `config.GenerationConfig` holds): a search hands its settings to
    `Policy.start` / `Policy.sample`, the rows carry them, and every `extend` of those rows samples with them."""

    @property
    def max_new_tokens(self) -> int: ...

    @property
    def temperature(self) -> float: ...

    @property
    def top_k(self) -> int: ...

    @property
    def top_p(self) -> float: ...

    @property
    def do_sample(self) -> bool: ...


class RowState(Protocol):
    """Per-row state that another model keeps beside the policy's (e.g. a value model's own KV cache)."""

    def select(self, index: torch.Tensor) -> Any:
        """The state of rows `index` (repeats allowed); may reorder in place and return self."""
        ...


@dataclass
class Rows:
    """Partial responses with everything needed to continue them without re-encoding their prefix.

    `next_logits` holds the policy's logits for each row's next token and `hidden` the last-layer hidden state
    of each row's last token (prompt or response): the features value heads read at no extra cost. A backend that
    keeps its KV cache itself (vLLM: rows are token-id prefixes, its prefix cache finds their blocks) leaves
    `cache`, `attention_mask`, `next_logits` and `hidden` None.
    """

    prompt_index: torch.Tensor
    """(R,) which prompt of the batch each row continues."""
    cache: Cache | None
    """The policy's KV cache over prompt + response tokens, R rows (None: the backend keeps its own)."""
    attention_mask: torch.Tensor | None
    """(R, T) 1 for real tokens, 0 for left padding and for steps after a row ended (None without `cache`)."""
    next_logits: torch.Tensor | None
    """(R, V) logits for each row's next token (None: the backend samples them itself)."""
    hidden: torch.Tensor | None
    """(R, H) last hidden state of each row's last real token (None: the backend exposes no hidden states)."""
    response: torch.Tensor
    """(R, max_new_tokens) response token ids, padded."""
    length: torch.Tensor
    """(R,) response tokens so far."""
    done: torch.Tensor
    """(R,) True once a row emitted an end-of-turn token."""
    logprob: torch.Tensor
    """(R,) log π_base of the response so far (unwarped logits): eq. 14's optional term."""
    prompt_tokens: list[list[int]] = field(default_factory=list)
    """Token ids of each prompt of the batch (as fed to the policy, chat template applied, no padding)."""
    prompts: list[Prompt] = field(default_factory=list)
    """The batch's prompts (`prompt_index` indexes them): what models with another tokenizer re-read as text."""
    extras: dict[str, RowState] = field(default_factory=dict)
    """States other models keep per row; `select` reorders them with the rows."""
    gen: GenerationSettings | None = None
    """The settings these rows are sampled with (set by the policy's `start`; None: the policy's default)."""

    @classmethod
    def begin(
        cls,
        prompts: Sequence[Prompt],
        prompt_tokens: list[list[int]],
        max_new_tokens: int,
        pad_id: int,
        device: torch.device,
        gen: GenerationSettings | None = None,
        **state: Any,
    ) -> Rows:
        """One row per prompt with no response yet, sampled with `gen`; `state` sets the backend's own fields
        (cache, attention_mask, next_logits, hidden), None otherwise."""
        rows = len(prompts)
        fields = dict(cache=None, attention_mask=None, next_logits=None, hidden=None) | state
        return cls(
            prompt_index=torch.arange(rows, device=device),
            response=torch.full((rows, max_new_tokens), pad_id, device=device),
            length=torch.zeros(rows, dtype=torch.long, device=device),
            done=torch.zeros(rows, dtype=torch.bool, device=device),
            logprob=torch.zeros(rows, device=device),
            prompt_tokens=prompt_tokens,
            prompts=list(prompts),
            gen=gen,
            **fields,
        )

    @property
    def size(self) -> int:
        return int(self.prompt_index.shape[0])

    @property
    def max_new_tokens(self) -> int:
        """The longest response these rows may reach (the width of `response`)."""
        return int(self.response.shape[1])

    def select(self, index: torch.Tensor) -> Rows:
        """Rows `index` (repeats allowed), in that order. Reorders the KV cache in place: `self` is consumed."""
        index = index.to(self.length.device)
        if self.cache is not None:
            self.cache.reorder_cache(cast(torch.LongTensor, index))  # transformers annotates LongTensor
        return Rows(
            prompt_index=self.prompt_index[index],
            cache=self.cache,
            attention_mask=_take(self.attention_mask, index),
            next_logits=_take(self.next_logits, index),
            hidden=_take(self.hidden, index),
            response=self.response[index],
            length=self.length[index],
            done=self.done[index],
            logprob=self.logprob[index],
            prompt_tokens=self.prompt_tokens,
            prompts=self.prompts,
            extras={name: state.select(index) for name, state in self.extras.items()},
            gen=self.gen,
        )

    def token_lists(self, index: torch.Tensor | None = None) -> list[list[int]]:
        """Response tokens of rows `index` (default: all), without padding."""
        response, length = self.response, self.length
        if index is not None:
            response, length = response[index], length[index]
        return [row[:n].tolist() for row, n in zip(response.cpu(), length.tolist(), strict=True)]


def _take(tensor: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    return None if tensor is None else tensor[index]
