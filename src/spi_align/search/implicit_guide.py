"""Implicit reward of partial responses as chunk-search guidance, on the pair's own KV caches.

For a policy that shares the tuned/reference pair's tokenizer, each row's response token ids are fed to both
models directly, and each model keeps a KV cache per row (a `SideCache` in `rows.extras` that follows the rows
through `Rows.select`), so a step costs only the tokens sampled since the last one, not the whole prefix.
The prompts (`rows.prompts`) are written as the pair reads them (its own chat template), whatever template the
policy used.
"""

from __future__ import annotations

import torch

from spi_align.core.errors import SpiError
from spi_align.core.rows import Rows
from spi_align.hf.side_cache import SideCache, row_state
from spi_align.scoring.implicit import CausalLM, ImplicitReward


class PairState(SideCache):
    """The pair's `SideCache` (tuned model first, then the reference), plus each row's running log-ratio."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.total = torch.zeros(self.fed.shape, device=self.fed.device)
        """(R,) Σ over fed tokens of log π_tuned − log π_ref (β not applied)."""

    def select(self, index: torch.Tensor) -> PairState:
        super().select(index)
        self.total = self.total[index.to(self.total.device)]
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
        return PairState.prefill(self.models, ids, rows.prompt_index, self.reward.pad_id, self.device)

    @torch.no_grad()
    def advance(self, state: PairState, rows: Rows) -> None:
        """Feed every row's response tokens sampled since the last call, adding their log-ratios to the total."""
        new = state.new_tokens(rows.response, rows.length, self.reward.pad_id)
        if new is None:
            return
        if int(new.ids.max()) >= min(lm.vocab_size for lm in self.models):
            raise SpiError("implicit guide: the policy's token ids fall outside the pair's vocabulary")
        before_new = list(state.last)  # each model's state before the first new token
        hidden = state.feed(new)
        targets = new.ids[new.real]
        row_of = new.real.nonzero()[:, 0]
        diff = torch.zeros(rows.size, device=self.device)
        for lm, sign, last, fed in zip(self.models, (1.0, -1.0), before_new, hidden, strict=True):
            before = torch.cat([last[:, None], fed[:, :-1]], dim=1)  # the state before each new token
            diff.index_add_(0, row_of, sign * lm.token_logprobs(before[new.real], targets))
        state.total = state.total + diff

    def __call__(self, rows: Rows) -> torch.Tensor:
        state = row_state(rows.extras, self.key, lambda: self.start(rows))
        self.advance(state, rows)
        return (self.reward.beta * state.total).to(rows.length.device)
