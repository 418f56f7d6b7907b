"""Implicit reward of a tuned/reference pair: r(x, y) = β · (log π_tuned(y|x) − log π_ref(y|x)) (Rafailov et al.).

The pair must share one tokenizer (e.g. a DPO-tuned model and the model it started from). Two uses:

- `ImplicitReward.score`: a `Scorer` on finished responses. The scored tokens are what the chat template writes
  after the generation prompt (the response and its end-of-turn), exactly the completion DPO trains on.
- `ImplicitReward.score_prefixes` / `score_token_prefixes`: the same sum over a partial response's tokens, with
  no closing tokens, for chunk search (weak-to-strong search re-tokenises text with the first, or passes token ids
  with the second). `search/implicit_guide.py` keeps it up to date chunk by chunk with the pair's own KV caches.

Log-probabilities come from the raw logits (no temperature or truncation), in fp32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import PreTrainedModel

from spi_align.core.errors import SpiError
from spi_align.core.records import Prompt
from spi_align.hf.batches import BackboneRunner, pad_batch, pad_token_id
from spi_align.hf.chat import render
from spi_align.hf.models import backbone_of
from spi_align.policy.sampling import final_logit_softcap, output_logits, token_logprob

Pair = tuple[Sequence[int], Sequence[int]]
"""(context token ids, target token ids): the log-probability of the targets given the context is summed."""


class CausalLM:
    """A causal LM seen as backbone + output embeddings, so log-probs are computed only where they are needed."""

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model.eval()
        self.backbone = backbone_of(model)
        self.lm_head = model.get_output_embeddings()
        self.softcap = final_logit_softcap(model)
        self.vocab_size = int(self.lm_head.weight.shape[0])
        self.runner = BackboneRunner(self.backbone, component="reward")  # the pair bills "reward"

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any = None) -> torch.Tensor:
        """Last hidden states (B, T, H) of the new tokens; positions follow the mask (left or inner padding)."""
        return self.runner.hidden(input_ids, attention_mask, cache)

    def new_cache(self) -> Any:
        """An empty KV cache for this model (what `SideCache` fills)."""
        return self.runner.new_cache()

    def token_logprobs(self, hidden: torch.Tensor, tokens: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """log p(tokens[i] | state whose last hidden state is hidden[i]) for (N, H) states and (N,) tokens, fp32."""
        out = torch.empty(tokens.shape[0], device=hidden.device, dtype=torch.float32)
        for start in range(0, tokens.shape[0], chunk):
            logits = output_logits(self.lm_head, hidden[start : start + chunk], self.softcap)
            out[start : start + chunk] = token_logprob(logits, tokens[start : start + chunk])
        return out


@torch.no_grad()
def sequence_logprobs(lm: CausalLM, pairs: Sequence[Pair], pad_id: int, batch_size: int = 8) -> torch.Tensor:
    """Σ_j log p(target_j | context, target_<j) for each (context, target) pair, (N,) fp32 on the CPU.

    Sequences are batched by length (right padding); only target positions go through the LM head.
    """
    totals = torch.zeros(len(pairs))
    order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
    for start in range(0, len(order), batch_size):
        batch = [i for i in order[start : start + batch_size] if len(pairs[i][1]) > 0]
        if not batch:
            continue
        seqs = [list(pairs[i][0]) + list(pairs[i][1]) for i in batch]
        ids, mask = pad_batch(seqs, pad_id, side="right")
        rows: list[int] = []
        cols: list[int] = []
        for r, (i, seq) in enumerate(zip(batch, seqs, strict=True)):
            first = len(pairs[i][0])
            if first == 0:
                raise SpiError("implicit reward: a target needs at least one context token before it")
            rows += [r] * len(pairs[i][1])
            cols += range(first - 1, len(seq) - 1)  # the state before each target token
        hidden = lm.hidden(ids.to(lm.device), mask.to(lm.device))
        row_t, col_t = torch.tensor(rows), torch.tensor(cols)
        targets = ids[row_t, col_t + 1].to(lm.device)
        logps = lm.token_logprobs(hidden[row_t.to(lm.device), col_t.to(lm.device)], targets).cpu()
        sums = torch.zeros(len(batch)).index_add_(0, row_t, logps)
        totals[torch.tensor(batch)] = sums
    return totals


class ImplicitReward:
    """β · (log π_tuned − log π_ref) of responses, batched; a `Scorer` on finished responses."""

    def __init__(
        self,
        tuned: PreTrainedModel,
        reference: PreTrainedModel,
        tokenizer: Any,
        beta: float = 1.0,
        chat_template: bool = True,
        batch_size: int = 8,
        name: str = "implicit",
    ) -> None:
        self.tuned, self.reference = CausalLM(tuned), CausalLM(reference)
        if self.tuned.vocab_size != self.reference.vocab_size:
            raise SpiError(
                f"implicit reward: tuned and reference models have different vocabularies "
                f"({self.tuned.vocab_size} vs {self.reference.vocab_size}); they must share one tokenizer"
            )
        self.tokenizer = tokenizer
        self.beta = beta
        self.chat_template = chat_template and getattr(tokenizer, "chat_template", None) is not None
        self.batch_size = batch_size
        self.name = name
        self.pad_id = pad_token_id(tokenizer)

    # --- tokenisation -----------------------------------------------------------------------------------------
    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_text(self, prompt: Prompt) -> str:
        """The prompt as the pair reads it (`hf.chat.render`, earlier turns included): chat template with the
        generation prompt, or the turns' texts."""
        return render(self.tokenizer, prompt, templated=self.chat_template)

    def prompt_ids(self, prompt: Prompt) -> list[int]:
        """Token ids of `prompt_text` (without a chat template, the tokenizer's special tokens are added)."""
        return list(self.tokenizer(self.prompt_text(prompt), add_special_tokens=not self.chat_template)["input_ids"])

    def completion_text(self, prompt: Prompt, response: str) -> str:
        """What follows the prompt for a finished response: the template's assistant turn (with its end-of-turn)
        or, without a template, the response and the end-of-sequence token."""
        if not self.chat_template:
            return response + (self.tokenizer.eos_token or "")
        head = self.prompt_text(prompt)
        full = render(self.tokenizer, prompt, response, templated=True)
        if not full.startswith(head):
            raise SpiError("implicit reward: the chat template does not render the prompt as a prefix of the dialogue")
        return full[len(head) :]

    # --- scores -----------------------------------------------------------------------------------------------
    def log_ratio(self, pairs: Sequence[Pair]) -> torch.Tensor:
        """β · Σ_j [log π_tuned − log π_ref](target_j | ...) of each (context, target) pair, (N,) on the CPU."""
        tuned = sequence_logprobs(self.tuned, pairs, self.pad_id, self.batch_size)
        ref = sequence_logprobs(self.reference, pairs, self.pad_id, self.batch_size)
        return self.beta * (tuned - ref)

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """Implicit reward of finished responses (end-of-turn included)."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        pairs = [
            (self.prompt_ids(p), self._ids(self.completion_text(p, r))) for p, r in zip(prompts, responses, strict=True)
        ]
        return self.log_ratio(pairs).tolist()

    def score_prefixes(self, prompts: Sequence[Prompt], partial: Sequence[str]) -> list[float]:
        """Implicit reward of partial responses given as text: their own tokens only, nothing closes them."""
        if len(prompts) != len(partial):
            raise ValueError(f"{len(prompts)} prompts but {len(partial)} partial responses")
        return self.log_ratio(
            [(self.prompt_ids(p), self._ids(r)) for p, r in zip(prompts, partial, strict=True)]
        ).tolist()

    def score_token_prefixes(self, prompts: Sequence[Prompt], tokens: Sequence[Sequence[int]]) -> list[float]:
        """Implicit reward of partial responses given as token ids of the pair's own tokenizer."""
        return self.log_ratio([(self.prompt_ids(p), t) for p, t in zip(prompts, tokens, strict=True)]).tolist()
