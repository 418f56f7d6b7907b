"""Implicit reward of partial responses as chunk-search guidance, on the pair's own KV caches.

For a policy that shares the tuned/reference pair's tokenizer, each row's response token ids are fed to both
models directly, and each model keeps a KV cache per row (a `RowState` in `rows.extras` that follows the rows
through `Rows.select`), so a step costs only the tokens sampled since the last one, not the whole prefix.
The prompts (`rows.prompts`) are written as the pair reads them (its own chat template), whatever template the
policy used.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from spi_align.errors import SpiError
from spi_align.policy import Rows
from spi_align.scoring.implicit import CausalLM, ImplicitReward


class PairState:
    """Per-row state of the tuned and reference models: caches, mask, last hidden states, running log-ratio."""

    def __init__(
        self,
        caches: list[DynamicCache],
        mask: torch.Tensor,
        last: list[torch.Tensor],
        fed: torch.Tensor,
        total: torch.Tensor,
    ) -> None:
        self.caches = caches
        self.mask = mask
        """(R, T) 1 for the pair's real tokens (prompt and fed response tokens)."""
        self.last = last
        """Per model, (R, H): hidden state of each row's last fed token (it predicts the next one)."""
        self.fed = fed
        """(R,) response tokens already fed."""
        self.total = total
        """(R,) Σ over fed tokens of log π_tuned − log π_ref (β not applied)."""

    def select(self, index: torch.Tensor) -> PairState:
        """Rows `index` (repeats allowed); reorders the caches in place and returns self."""
        index = index.to(self.mask.device)
        for cache in self.caches:
            cache.reorder_cache(index)
        self.mask = self.mask[index]
        self.last = [h[index] for h in self.last]
        self.fed, self.total = self.fed[index], self.total[index]
        return self


class CachedImplicitGuide:
    """A `ChunkBeamSearch` value: β Σ_t [log π_tuned − log π_ref](y_t | x, y_<t) of each row's partial response."""

    key = "implicit_pair"

    def __init__(self, reward: ImplicitReward) -> None:
        self.reward = reward
        self.models: list[CausalLM] = [reward.tuned, reward.reference]
        self.device = reward.tuned.device

    @torch.no_grad()
    def start(self, rows: Rows) -> PairState:
        """Prefill the batch's prompts once into both caches, then fan out to the rows' prompts."""
        ids = [self.reward.prompt_ids(p) for p in rows.prompts]
        width = max(len(i) for i in ids)
        input_ids = torch.full((len(ids), width), self.reward.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for r, seq in enumerate(ids):
            input_ids[r, width - len(seq) :] = torch.tensor(seq)
            mask[r, width - len(seq) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        caches, last = [], []
        for lm in self.models:
            cache = DynamicCache(config=lm.model.config)
            last.append(lm.hidden(input_ids, mask, cache)[:, -1])
            caches.append(cache)
        zeros = torch.zeros(len(ids), device=self.device)
        state = PairState(caches, mask, last, zeros.long(), zeros)
        return state.select(rows.prompt_index.to(self.device))

    @torch.no_grad()
    def advance(self, state: PairState, rows: Rows) -> None:
        """Feed every row's response tokens sampled since the last call, adding their log-ratios to the total."""
        length = rows.length.to(self.device)
        new = length - state.fed
        n = int(new.max()) if new.numel() else 0
        if n <= 0:
            return
        steps = torch.arange(n, device=self.device)
        real = steps[None, :] < new[:, None]  # (R, n): left-aligned new tokens, padding after
        cols = (state.fed[:, None] + steps[None, :]).clamp(max=rows.response.shape[1] - 1)
        block = rows.response.to(self.device).gather(1, cols)
        block = torch.where(real, block, self.reward.pad_id)
        if int(block.max()) >= min(lm.vocab_size for lm in self.models):
            raise SpiError("implicit guide: the policy's token ids fall outside the pair's vocabulary")
        state.mask = torch.cat([state.mask, real.long()], dim=1)
        targets = block[real]
        row_of = real.nonzero()[:, 0]
        diff = torch.zeros(rows.size, device=self.device)
        for k, (lm, sign) in enumerate(zip(self.models, (1.0, -1.0), strict=True)):
            hidden = lm.hidden(block, state.mask, state.caches[k])  # (R, n, H)
            before = torch.cat([state.last[k][:, None], hidden[:, :-1]], dim=1)  # the state before each token
            logps = lm.token_logprobs(before[real], targets)
            diff.index_add_(0, row_of, sign * logps)
            last_pos = (new - 1).clamp(min=0)
            latest = hidden[torch.arange(rows.size, device=self.device), last_pos]
            state.last[k] = torch.where((new > 0)[:, None], latest, state.last[k])
        state.total = state.total + diff
        state.fed = torch.maximum(state.fed, length)

    def __call__(self, rows: Rows) -> torch.Tensor:
        state = rows.extras.get(self.key)
        if state is None:
            state = self.start(rows)
            rows.extras[self.key] = state
        assert isinstance(state, PairState)
        self.advance(state, rows)
        return (self.reward.beta * state.total).to(rows.length.device)
