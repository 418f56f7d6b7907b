"""Separate value models as search guidance: Σ_i weight_i · V_i(x, y_partial), weight_i = γ/β_i.

A value model whose tokenizer is the policy's (`same_tokenizer`, compared for real) reads the policy's token ids
and keeps its own KV cache over the same rows: a `SideCache` (`spi_align.hf.side_cache`) in `rows.extras` that
`Rows.select` reorders with the rows. The first call prefills each prompt of the batch once (from
`rows.prompt_tokens`) and fans it out to the rows; every call then feeds only the response tokens sampled since the
previous one, so the cost of a search grows with the tokens generated, not with prefix length × steps. Rows that
stopped feed nothing and keep their last value.

A value model with another tokenizer gets text: each call decodes the responses, writes prompt + response the
way the value model reads them (`ValueModel.prompt_ids`/`response_ids`: its own chat template) and scores the
whole sequence from scratch. Value models sharing one backbone object share its cache and its forward pass.
Either way every token a value model's backbone computes is billed to the search's cost as "value" forward tokens
(`Cost.forward_tokens`), so a re-tokenising guide shows what it costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from spi_align.core.errors import SpiError
from spi_align.core.records import report_term
from spi_align.core.rows import Rows
from spi_align.hf.batches import pad_batch
from spi_align.hf.side_cache import SideCache, row_state
from spi_align.hf.tokenizers import same_tokenizer
from spi_align.values.heads import guidance_weights, weighted_total
from spi_align.values.model import ValueModel


class ValueModelGuide:
    """A `ChunkBeamSearch` value function: `guide(rows) -> (R,)` Σ_i weight_i V_i at each row's current state."""

    def __init__(
        self,
        models: Sequence[ValueModel],
        weights: Sequence[float],
        policy_tokenizer: Any,
        batch_size: int = 64,
    ) -> None:
        self.weights = guidance_weights(models, weights)
        self.models = [m.eval() for m in models]
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
                value = self.models[i].value(hidden)
                report_term(f"V_{i}", self.weights[i], value)  # to a trace being recorded, if any
                total = weighted_total([(self.weights[i], value)], total)
        return total

    # --- same tokenizer: own KV cache -----------------------------------------------------------------------
    def _incremental(self, model: ValueModel, rows: Rows) -> torch.Tensor:
        """Feed each row's response tokens sampled since the last call (the first call prefills the prompts)."""
        state = row_state(rows.extras, f"value_model:{id(model.backbone)}", lambda: self._prefill(model, rows))
        new = state.new_tokens(rows.response, rows.length, model.pad_id)
        if new is not None:
            state.feed(new)
        return state.last[0]

    def _prefill(self, model: ValueModel, rows: Rows) -> SideCache:
        if not rows.prompt_tokens:
            raise SpiError("rows carry no prompt tokens: the value model's cache cannot be prefilled")
        return SideCache.prefill([model], rows.prompt_tokens, rows.prompt_index, model.pad_id, model.device)

    # --- another tokenizer: text, re-tokenised, scored whole ---------------------------------------------------
    def _reencoded(self, model: ValueModel, rows: Rows) -> torch.Tensor:
        if not rows.prompts:
            raise SpiError("rows carry no prompt texts: a value model with another tokenizer cannot read them")
        texts = self.policy_tokenizer.batch_decode(rows.token_lists(), skip_special_tokens=True)
        prompt_index = rows.prompt_index.tolist()
        prompt_ids = {p: model.prompt_ids(rows.prompts[p]) for p in set(prompt_index)}
        seqs = [prompt_ids[p] + model.response_ids(t) for p, t in zip(prompt_index, texts, strict=True)]
        out = []
        for start in range(0, len(seqs), self.batch_size):
            ids, mask = pad_batch(seqs[start : start + self.batch_size], model.pad_id, device=model.device)
            out.append(model.hidden(ids, mask)[:, -1])
        return torch.cat(out)
