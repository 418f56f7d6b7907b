"""Separate value models as search guidance: Σ_i weight_i · V_i(x, y_partial), weight_i = γ/β_i.

A value model whose tokenizer is the policy's (`same_tokenizer`, compared for real) reads the policy's token ids
and keeps its own KV cache over the same rows: a `RowState` in `rows.extras` that `Rows.select` reorders with the
rows. The first call prefills each prompt of the batch once (from `rows.prompt_tokens`) and fans it out to the
rows; every call then feeds only the response tokens sampled since the previous one, so the cost of a search
grows with the tokens generated, not with prefix length × steps. Rows that stopped feed nothing and keep their
last value.

A value model with another tokenizer gets text: each call decodes the responses, writes prompt + response the
way the value model reads them (`ValueModel.prompt_ids`/`response_ids`: its own chat template) and scores the
whole sequence from scratch. Value models sharing one backbone object share its cache and its forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import DynamicCache

from spi_align.errors import SpiError
from spi_align.policy import Rows
from spi_align.values.model import ValueModel
from spi_align.values.tokenizers import same_tokenizer


class ValueCacheState:
    """A value backbone's per-row state: KV cache, attention mask, response tokens fed, last hidden state."""

    def __init__(self, cache: DynamicCache, attention_mask: torch.Tensor, fed: torch.Tensor, hidden: torch.Tensor):
        self.cache = cache
        self.attention_mask = attention_mask
        """(R, T) 1 for prompt and fed response tokens; 0 for padding and for gaps of rows with fewer new tokens."""
        self.fed = fed
        """(R,) response tokens already in the cache."""
        self.hidden = hidden
        """(R, H) last-layer hidden state of each row's last fed token (the state the value reads)."""

    def select(self, index: torch.Tensor) -> ValueCacheState:
        """Rows `index` (repeats allowed); reorders the cache in place and returns self."""
        index = index.to(self.attention_mask.device)
        self.cache.reorder_cache(index)
        self.attention_mask = self.attention_mask[index]
        self.fed = self.fed[index]
        self.hidden = self.hidden[index]
        return self


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(list(seq), dtype=torch.long)
            mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


class ValueModelGuide:
    """A `ChunkBeamSearch` value function: `guide(rows) -> (R,)` Σ_i weight_i V_i at each row's current state."""

    def __init__(
        self,
        models: Sequence[ValueModel],
        weights: Sequence[float],
        policy_tokenizer: Any,
        batch_size: int = 64,
    ) -> None:
        if len(models) != len(weights):
            raise ValueError("one weight per value model")
        self.models = [m.eval() for m in models]
        self.weights = [float(w) for w in weights]
        self.policy_tokenizer = policy_tokenizer
        self.batch_size = batch_size
        # one entry per distinct backbone: (the model whose backbone runs, indices of the models reading it)
        self.groups: list[tuple[ValueModel, list[int]]] = []
        for i, model in enumerate(self.models):
            for lead, members in self.groups:
                if lead.backbone is model.backbone:
                    members.append(i)
                    break
            else:
                self.groups.append((model, [i]))
        self.incremental = [same_tokenizer(lead.tokenizer, policy_tokenizer) for lead, _ in self.groups]

    @torch.no_grad()
    def __call__(self, rows: Rows) -> torch.Tensor:
        total = torch.zeros(rows.size, device=rows.length.device)
        for (lead, members), incremental in zip(self.groups, self.incremental, strict=True):
            hidden = self._incremental(lead, rows) if incremental else self._reencoded(lead, rows)
            for i in members:
                total += self.weights[i] * self.models[i].value(hidden).to(total.device)
        return total

    # --- same tokenizer: own KV cache -----------------------------------------------------------------------
    def _incremental(self, model: ValueModel, rows: Rows) -> torch.Tensor:
        key = f"value_model:{id(model.backbone)}"
        state = rows.extras.get(key)
        if state is None:
            state = self._prefill(model, rows)
            rows.extras[key] = state
        return self._feed(model, rows, state)  # type: ignore[arg-type]

    def _prefill(self, model: ValueModel, rows: Rows) -> ValueCacheState:
        """Encode each prompt of the batch once, then fan the cache out to the rows."""
        if not rows.prompt_tokens:
            raise SpiError("rows carry no prompt tokens: the value model's cache cannot be prefilled")
        ids, mask = _left_pad(rows.prompt_tokens, model.pad_id, model.device)
        cache = DynamicCache(config=model.backbone.config)
        hidden = model.hidden(ids, mask, cache)[:, -1]
        index = rows.prompt_index.to(model.device)
        cache.reorder_cache(index)
        fed = torch.zeros(rows.size, dtype=torch.long, device=model.device)
        return ValueCacheState(cache, mask[index], fed, hidden[index])

    def _feed(self, model: ValueModel, rows: Rows, state: ValueCacheState) -> torch.Tensor:
        """Feed each row's response tokens beyond `state.fed` (left-aligned, padded to the longest) in one forward."""
        device = model.device
        length = rows.length.to(device)
        new = length - state.fed
        n = int(new.max()) if new.numel() else 0
        if n > 0:
            offsets = torch.arange(n, device=device)
            keep = offsets[None, :] < new[:, None]
            response = rows.response.to(device)
            column = (state.fed[:, None] + offsets[None, :]).clamp(max=response.shape[1] - 1)
            ids = torch.where(keep, response.gather(1, column), model.pad_id)
            state.attention_mask = torch.cat([state.attention_mask, keep.long()], dim=1)
            hidden = model.hidden(ids, state.attention_mask, state.cache)
            last = hidden[torch.arange(rows.size, device=device), (new - 1).clamp(min=0)]
            state.hidden = torch.where((new > 0)[:, None], last.to(state.hidden.dtype), state.hidden)
            state.fed = length.clone()
        return state.hidden

    # --- another tokenizer: text, re-tokenised, scored whole ---------------------------------------------------
    def _reencoded(self, model: ValueModel, rows: Rows) -> torch.Tensor:
        if not rows.prompts:
            raise SpiError("rows carry no prompt texts: a value model with another tokenizer cannot read them")
        texts = self.policy_tokenizer.batch_decode(rows.token_lists(), skip_special_tokens=True)
        prompt_index = rows.prompt_index.tolist()
        prompt_ids = {p: model.prompt_ids(rows.prompts[p].text) for p in set(prompt_index)}
        seqs = [prompt_ids[p] + model.response_ids(t) for p, t in zip(prompt_index, texts, strict=True)]
        out = []
        for start in range(0, len(seqs), self.batch_size):
            ids, mask = _left_pad(seqs[start : start + self.batch_size], model.pad_id, model.device)
            out.append(model.hidden(ids, mask)[:, -1])
        return torch.cat(out)
