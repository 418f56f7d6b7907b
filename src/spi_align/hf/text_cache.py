"""`TextSideCache`: the KV cache of a model that reads the policy's text through another tokenizer.

A value model or a reward model with a tokenizer of its own cannot be fed the policy's token ids: it reads the
decoded text, tokenised its way. Scoring each partial response from scratch at every chunk costs prefix × steps.
This `RowState` (kept in `Rows.extras`, reordered by `Rows.select`, a `SideCache` underneath) keeps the model's own
KV cache across chunks instead, and at each call:

1. takes each changed row's whole token ids as a fresh tokenisation gives them (prompt included, the model's own
   format: the caller tokenises the whole text, so the ids are exactly those a re-encode from scratch would read);
2. compares them with the ids already in the cache: the longest common prefix stays, and only the rest is fed;
3. masks out the cached tokens past that prefix (their tokenisation changed at the boundary: a word cut by the
   chunk, "hel" + "lo" read as "hello", or a partial UTF-8 character decoded as U+FFFD) and feeds the new ids after
   the last column, with positions that follow the mask, so they take the places of the tokens they replace.

The tail re-encoded is therefore measured on each row rather than fixed in advance (a fixed "last k tokens are
unstable" rule would still need the fresh tokenisation to check itself against, and a tokenizer may change more
than k tokens, e.g. a SentencePiece merge across a space, or fewer, usually none). Whatever changed is re-encoded,
and nothing else: a row whose whole tokenisation changed is re-encoded whole. Tokenising whole texts costs
tokenizer time linear in the characters, as decoding the policy's tokens already does; a model forward reads an
unchanged token again only when a row's ids shrank to a prefix of the cached ones (its last token is fed again, to
read the state after it).

Masked columns stay in the cache (a few per call) until the rows end. A model with sliding-window layers counts
them (and left padding) inside its window, as the policy's own cache does with padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Self

import torch

from spi_align.hf.batches import pad_batch
from spi_align.hf.side_cache import SideCache


@dataclass
class NewText:
    """What one `TextSideCache.update` fed: each row's ids past the prefix it kept, left-aligned in one block."""

    ids: torch.Tensor
    """(R, n) the ids fed; pad after each row's."""
    real: torch.Tensor
    """(R, n) True on each row's fed ids."""
    count: torch.Tensor
    """(R,) ids fed per row (0: unchanged)."""
    kept: torch.Tensor
    """(R,) ids of each row's sequence kept from the cache (the fed ones follow them)."""
    hidden: list[torch.Tensor]
    """Per encoder, (R, n, H): the states of the fed ids."""


class TextSideCache(SideCache):
    """Per-row KV caches of models reading the policy's text through their own tokenizer (built by `prefill`);
    `last` holds each encoder's state after each row's last token, `ids` the tokens it has read, `fed` their
    number."""

    prompt_ids: list[list[int]]
    """The ids of each prompt of the batch (what `prefill` encoded; indexed by prompt, not reordered)."""
    ids: list[list[int]]
    """Per row, the token ids in the caches (prompt, then response), as the model tokenises them."""
    columns: list[list[int]]
    """Per row, the cache column of each of `ids`."""
    seen: torch.Tensor
    """(R,) policy response tokens that each row's `ids` were tokenised from."""
    refed: int
    """Tokens fed again because their tokenisation changed (a count for tests and logs)."""

    def read_prompts(self, prompt_ids: Sequence[Sequence[int]]) -> None:
        self.prompt_ids = [list(p) for p in prompt_ids]
        self.ids = [list(p) for p in prompt_ids]
        width = self.attention_mask.shape[1]
        self.columns = [list(range(width - len(p), width)) for p in prompt_ids]
        self.seen = torch.zeros_like(self.fed)
        self.refed = 0

    def select(self, index: torch.Tensor) -> Self:
        super().select(index)
        rows = index.tolist()
        # lists are replaced, never changed in place, so rows selected twice may share them
        self.ids = [self.ids[r] for r in rows]
        self.columns = [self.columns[r] for r in rows]
        self.seen = self.seen[index.to(self.seen.device)]
        return self

    def pending(self, length: torch.Tensor) -> list[int]:
        """Rows whose policy response changed since their ids were last updated (`length`: (R,) its tokens)."""
        return (length.to(self.seen.device) != self.seen).nonzero().squeeze(1).tolist()

    def update(
        self, rows: Sequence[int], seqs: Sequence[Sequence[int]], length: torch.Tensor, pad_id: int
    ) -> NewText | None:
        """Rows `rows` now read `seqs` (each one's whole ids, prompt included, tokenised afresh from the policy's
        `length` response tokens): the ids past the prefix each shares with what is cached are fed in one forward
        per encoder, the cached ones past it masked out. Returns what was fed (None: nothing changed)."""
        size = len(self.ids)
        kept = [len(ids) for ids in self.ids]
        fed: list[list[int]] = [[] for _ in range(size)]
        stale: list[tuple[int, int]] = []
        for r, seq in zip(rows, seqs, strict=True):
            old, seq = self.ids[r], list(seq)
            common = _common_prefix(old, seq)
            if common == len(old) == len(seq):
                continue
            if not seq:
                raise ValueError("a row's sequence is empty: it needs at least its prompt")
            common = min(common, len(seq) - 1)  # at least its last token is fed, to read the state after it
            stale += [(r, column) for column in self.columns[r][common:]]
            self.refed += len(old) - common
            kept[r], fed[r], self.ids[r] = common, seq[common:], seq
        self.seen = length.to(self.seen.device).clone()
        if not any(fed):
            return None
        if stale:
            at = torch.tensor(stale, device=self.attention_mask.device)
            self.attention_mask[at[:, 0], at[:, 1]] = 0
        width = self.attention_mask.shape[1]
        for r, ids in enumerate(fed):
            if ids:
                self.columns[r] = self.columns[r][: kept[r]] + list(range(width, width + len(ids)))
        block, real = pad_batch(fed, pad_id, side="right", device=self.attention_mask.device)
        count = real.sum(1)
        hidden = self.feed_block(block, real.bool(), count)
        self.fed = torch.tensor([len(ids) for ids in self.ids], device=self.fed.device)
        return NewText(block, real.bool(), count, torch.tensor(kept, device=count.device), hidden)


def _common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two id lists."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:  # the usual case, compared at C speed: nothing changed, the text only grew
        return n
    return next(i for i in range(n) if a[i] != b[i])
