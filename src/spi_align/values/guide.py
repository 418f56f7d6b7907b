"""Separate value models as search guidance: Σ_i weight_i · V_i(x, y_partial), weight_i = γ/β_i.

A value model whose tokenizer is the policy's (`same_tokenizer`, compared for real) reads the policy's token ids
and keeps its own KV cache over the same rows: a `SideCache` (`spi_align.hf.side_cache`) in `rows.extras` that
`Rows.select` reorders with the rows. The first call prefills each prompt of the batch once (from
`rows.prompt_tokens`) and fans it out to the rows; every call then feeds only the response tokens sampled since the
previous one, so the cost of a search grows with the tokens generated, not with prefix length × steps. Rows that
stopped feed nothing and keep their last value.

A value model with another tokenizer reads text, and keeps its own KV cache too: a `TextSideCache`
(`spi_align.hf.text_cache`). Each call decodes the responses of the rows that sampled tokens since the previous one,
writes prompt + response the way the value model reads them (`ValueModel.prompt_ids`/`responses_ids`: its own chat
template, each prompt tokenised once per batch), and feeds only the ids past the prefix already cached: the new text
and the few tokens at the boundary whose tokenisation changed. The values equal those of scoring each whole text from
scratch. Value models sharing one backbone object share its cache and its forward pass. Either way every token a
value model's backbone computes is billed to the search's cost as "value" forward tokens (`Cost.forward_tokens`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from spi_align.core.errors import SpiError
from spi_align.core.records import report_term
from spi_align.core.rows import Rows
from spi_align.hf.side_cache import SideCache, row_state
from spi_align.hf.text_cache import TextSideCache
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
    ) -> None:
        self.weights = guidance_weights(models, weights)
        self.models = [m.eval() for m in models]
        self.policy_tokenizer = policy_tokenizer
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
        """Per group: True when it reads the policy's token ids, False when it reads the text."""

    @torch.no_grad()
    def __call__(self, rows: Rows) -> torch.Tensor:
        total = torch.zeros(rows.size, device=rows.length.device)
        for (lead, members), incremental in zip(self.groups, self.incremental, strict=True):
            hidden = self._incremental(lead, rows) if incremental else self._from_text(lead, rows)
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

    # --- another tokenizer: the text, its own KV cache -----------------------------------------------------------
    def _from_text(self, model: ValueModel, rows: Rows) -> torch.Tensor:
        """Re-tokenise the responses that changed since the last call and feed what their tokenisation adds."""
        key = f"value_model_text:{id(model.backbone)}"
        state = row_state(rows.extras, key, lambda: self._prefill_text(model, rows))
        todo = state.pending(rows.length)
        if todo:
            index = torch.tensor(todo, device=rows.length.device)
            texts = self.policy_tokenizer.batch_decode(rows.token_lists(index), skip_special_tokens=True)
            prompt_of = rows.prompt_index[index].tolist()
            responses = model.responses_ids(texts)
            seqs = [state.prompt_ids[p] + ids for p, ids in zip(prompt_of, responses, strict=True)]
            state.update(todo, seqs, rows.length, model.pad_id)
        return state.last[0]

    def _prefill_text(self, model: ValueModel, rows: Rows) -> TextSideCache:
        if not rows.prompts:
            raise SpiError("rows carry no prompt texts: a value model with another tokenizer cannot read them")
        prompt_ids = [model.prompt_ids(p) for p in rows.prompts]
        return TextSideCache.prefill([model], prompt_ids, rows.prompt_index, model.pad_id, model.device)
