"""The transformers backend: batched sampling and chunked continuation that keeps each prefix's KV cache.

Public transformers APIs do the work: the backbone's forward with `past_key_values`, the cache's
`reorder_cache` for row selection, the output embeddings for logits, and the logits warpers for sampling. One
piece reaches below them: the KV cache's full-attention layers are `backbone.GrowingLayer`, a subclass of
`transformers.cache_utils.DynamicLayer` that writes new positions into a buffer with room instead of
concatenating the whole cache each step (decode at 256 rows took half the time). It relies on that class's
`keys` / `values` attributes and its `update` / `crop` / `reorder_cache` / `batch_select_indices` signatures, which
tests/test_backbone.py checks against the installed transformers.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, Cache, PreTrainedModel

from spi_align.config import GenerationConfig, PolicyConfig
from spi_align.core.errors import SpiError
from spi_align.core.records import Cost, Prompt, billed
from spi_align.core.rows import GenerationSettings, Rows
from spi_align.hf.batches import BackboneRunner, LayerTap, pad_batch, pad_token_id
from spi_align.hf.models import backbone_of, resolve_device, resolve_model_source, to_device
from spi_align.hf.side_cache import TAPPED, TappedStates
from spi_align.policy.prompts import ChatPrompts, end_tokens
from spi_align.policy.sampling import TokenSampler, final_logit_softcap, output_logits, token_logprob


class HFPolicy(ChatPrompts):
    """A frozen causal LM: prefill prompts into `Rows`, extend rows by chunks, decode them to text."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer,
        gen: GenerationConfig,
        chat_template: bool = True,
        seed: int = 0,
    ) -> None:
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.gen = gen  # also builds the token sampler
        self.chat_template = chat_template and tokenizer.chat_template is not None
        self.device = next(model.parameters()).device
        self.backbone = backbone_of(model)
        self.runner = BackboneRunner(self.backbone)
        self.lm_head = model.get_output_embeddings()
        self.softcap = final_logit_softcap(model)
        ends = end_tokens(tokenizer, model.generation_config, self.chat_template)
        self.end_id = ends.turn
        self.eos_ids = torch.tensor(ends.stop, device=self.device)
        """Every id that ends a row (`end_id` and the generation config's)."""
        self.pad_id = pad_token_id(tokenizer, self.end_id)
        # Prompts are padded on the left; models that share this tokenizer (the reward head trained on the
        # policy's backbone) pad their text batches the same way.
        self.tokenizer.padding_side = "left"
        self.max_context = getattr(model.config, "max_position_embeddings", None)
        self.generator = torch.Generator(device=self.device)
        """Draws the sampled tokens, on the model's device."""
        self.choice_generator = torch.Generator()
        """Draws the search's own choices (softmax selection) from probabilities on the CPU, where a GPU's generator
        cannot draw."""
        self._peeked: tuple[weakref.ref, weakref.ref, torch.Tensor] | None = None
        self.tap: LayerTap | None = None
        """The layer whose input the policy keeps in its rows for a model sharing the layers below (`tap_layer`)."""
        self.reseed(seed)

    has_hidden_states = True
    """Rows carry each row's last hidden state (what value heads and the reward head read)."""

    @property
    def gen(self) -> GenerationConfig:
        """The default sampling settings (rows started without settings of their own sample with these)."""
        return self._gen

    @gen.setter
    def gen(self, gen: GenerationConfig) -> None:
        self._gen = gen
        self.sampler = TokenSampler(gen)

    def _sampler(self, gen: GenerationSettings | None) -> TokenSampler:
        """The token sampler for rows sampled with `gen` (None or the default settings: the default sampler)."""
        return self.sampler if gen is None or gen is self._gen else TokenSampler(gen)

    @property
    def max_new_tokens(self) -> int:
        return self.gen.max_new_tokens

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.get_text_config().hidden_size)

    def reseed(self, seed: int) -> None:
        """Restart the sampling streams (tokens and the search's choices): the same seed then gives the same
        tokens."""
        self.generator.manual_seed(seed)
        self.choice_generator.manual_seed(seed)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return output_logits(self.lm_head, hidden, self.softcap)

    def _forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Cache) -> torch.Tensor:
        """Run the backbone on new tokens; returns the last position's hidden state (R, H). With a tap, the tapped
        layer's input for those tokens is captured on the way (`_keep_tapped` hands it to the rows)."""
        if self.tap is None:
            return self.runner.hidden(input_ids, attention_mask, cache)[:, -1]
        with self.tap.armed():
            return self.runner.hidden(input_ids, attention_mask, cache)[:, -1]

    def tap_layer(self, index: int) -> LayerTap:
        """Keep in the rows (`Rows.extras[TAPPED]`, a `hf.side_cache.TappedStates`) the states that layer `index` of
        the backbone receives for every token the policy feeds (prompts, sampled tokens, end tokens; an end-token
        peek's apart, as it is cropped back), for a model that runs its own layers from there up on them (a reward
        model sharing the layers below: `scoring/top_layers.py`). No forward is added; one tapped layer per policy
        (tapping another replaces it, and rows started before carry none)."""
        if self.tap is None or self.tap.index != index:
            if self.tap is not None:
                self.tap.remove()
            self.tap = LayerTap(self.backbone, index)
        return self.tap

    def _keep_tapped(self, rows: Rows, fed: torch.Tensor, peek: bool = False) -> None:
        """Hand the tapped states of the tokens just fed (rows `fed`) to the rows' `TappedStates`: one more block, or
        for an end-token peek its `peeked`."""
        tapped = rows.extras.get(TAPPED)
        if self.tap is None or not isinstance(tapped, TappedStates) or tapped.source is not self.tap:
            return
        states = self.tap.take()
        if peek:
            tapped.peeked = (states[:, -1], fed)
        else:
            tapped.add(states, fed)

    @torch.no_grad()
    def start(self, prompts: Sequence[Prompt], cost: Cost, gen: GenerationSettings | None = None) -> Rows:
        """Encode the prompts (left-padded, one row each) and compute their next-token logits; the rows are sampled
        with `gen` (default: `self.gen`)."""
        gen = self.gen if gen is None else gen
        encoded = self.checked_prompt_ids(prompts, gen.max_new_tokens)
        ids, mask = pad_batch(encoded, self.pad_id, device=self.device)
        cache = self.runner.new_cache()
        with cost.timer("prefill"):
            hidden = self._forward(ids, mask, cache)
            logits = self._logits(hidden)
        cost.policy_forwards += 1
        cost.count_forward("policy_prefill", sum(len(ids) for ids in encoded))
        rows = Rows.begin(
            prompts,
            encoded,
            gen.max_new_tokens,
            self.pad_id,
            self.device,
            gen,
            cache=cache,
            attention_mask=mask,
            next_logits=logits,
            hidden=hidden,
        )
        if self.tap is not None:
            rows.extras[TAPPED] = TappedStates(self.tap, self.tap.take(), mask)
        return rows

    @torch.no_grad()
    def extend(self, rows: Rows, max_tokens: int, cost: Cost) -> Rows:
        """Sample up to `max_tokens` more tokens for every unfinished row, in place; returns `rows`.

        Tokens are drawn with the rows' settings (`rows.gen`). A row stops at an end-of-turn token or at
        `max_new_tokens`. After the call, `hidden` and `next_logits` describe each row's last token, so the next
        chunk starts without re-encoding.
        """
        limit = rows.max_new_tokens
        sampler = self._sampler(rows.gen)
        active = ~rows.done & (rows.length < limit)
        arange = torch.arange(rows.size, device=self.device)
        before = rows.length.clone() if cost.tokens_by_prompt is not None else None
        with cost.timer("decode"):
            for _ in range(max_tokens):
                if not bool(active.any()):
                    break
                everyone = bool(active.all())  # then the (R, V) masking below is skipped
                cache, mask, next_logits, last_hidden = _held(rows)
                token = sampler(next_logits, self.generator)
                token = token if everyone else torch.where(active, token, self.pad_id)
                step_logprob = token_logprob(next_logits, token)
                rows.logprob += step_logprob if everyone else torch.where(active, step_logprob, 0.0)
                column = rows.length.clamp(max=limit - 1)
                rows.response[arange, column] = torch.where(active, token, rows.response[arange, column])
                rows.length += active.long()
                rows.attention_mask = mask = torch.cat([mask, active.long()[:, None]], dim=1)
                hidden = self._forward(token[:, None], mask, cache)
                self._keep_tapped(rows, active)
                logits = self._logits(hidden)
                rows.hidden = hidden if everyone else torch.where(active[:, None], hidden, last_hidden)
                rows.next_logits = logits if everyone else torch.where(active[:, None], logits, next_logits)
                fed = int(active.sum())  # the rows that sampled a token feed it back (the others a masked pad)
                cost.tokens_generated += fed
                cost.count_forward("policy_decode", fed)
                cost.policy_forwards += 1
                rows.done |= active & torch.isin(token, self.eos_ids)
                active = active & ~rows.done & (rows.length < limit)
        if before is not None:
            per_prompt = torch.zeros(len(rows.prompts), dtype=torch.long, device=self.device)
            cost.count_by_prompt(per_prompt.index_add_(0, rows.prompt_index, rows.length - before).tolist())
        return rows

    def last_hidden(self, rows: Rows) -> torch.Tensor:
        """(R, H) the state after each row's last token: kept in the rows by every forward (free)."""
        return _held(rows)[3]

    @torch.no_grad()
    def end_hidden(self, rows: Rows, index: torch.Tensor, cost: Cost) -> torch.Tensor:
        """Hidden states (len(index), H) after the end-of-turn token of rows `index`, which must be finished or at
        max_new_tokens: a row that ended itself already holds it; the others are fed the end token once and marked
        done (so their KV cache grows by one position: never extend them again)."""
        need = torch.zeros(rows.size, dtype=torch.bool, device=self.device)
        need[index] = True
        need &= ~rows.done
        if bool(need.any()):
            with cost.timer("reward"):
                rows.hidden, rows.attention_mask = self._feed_end(rows, need)
                self._keep_tapped(rows, need)
            cost.count_forward("peek", int(need.sum()))
            rows.done |= need
            cost.policy_forwards += 1
        return _held(rows)[3][index]

    @torch.no_grad()
    def peek_end_hidden(self, rows: Rows) -> torch.Tensor:
        """Hidden states (R, H) each row would have after the end-of-turn token, without ending any row: rows not
        yet done are fed the end token in one forward of the backbone (no logits: the LM head is never run), then the
        KV cache is cropped back (a view, no copy, sliding-window layers included, past their window too:
        `hf.kv_cache.GrowingSlidingLayer`) and the attention mask left as it was, so generation goes on exactly as if
        nothing had been fed.

        Peeking again at the same rows in the same state (the anchored values and `spi.reward_guide`'s partial reward
        both read these states in one chunk) returns the first peek's states without a forward: the rows are the
        same while `rows` and its `hidden` are the same objects (extending or ending rows replaces `hidden`)."""
        need = ~rows.done
        cache, _, _, last_hidden = _held(rows)
        if not bool(need.any()):
            return last_hidden
        if self._peeked is not None and self._peeked[0]() is rows and self._peeked[1]() is rows.hidden:
            return self._peeked[2]
        hidden, _ = self._feed_end(rows, need)
        self._keep_tapped(rows, need, peek=True)
        cache.crop(-1)
        self._peeked = (weakref.ref(rows), weakref.ref(last_hidden), hidden)
        cost = billed()  # no cost is handed in: bill the search that is timing its guidance
        if cost is not None:
            cost.count_forward("peek", int(need.sum()))
        return hidden

    def _feed_end(self, rows: Rows, need: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed the end-of-turn token to rows `need` (the others a masked pad) through the cache; returns the
        hidden states (rows not fed keep theirs) and the attention mask with the new column."""
        cache, mask, _, last_hidden = _held(rows)
        token = torch.where(need, self.end_id, self.pad_id)
        mask = torch.cat([mask, need.long()[:, None]], dim=1)
        hidden = self._forward(token[:, None], mask, cache)
        return torch.where(need[:, None], hidden, last_hidden), mask

    def texts(self, rows: Rows, index: torch.Tensor | None = None) -> list[str]:
        """Decode the responses of rows `index` (default: all), special tokens dropped."""
        return self.tokenizer.batch_decode(rows.token_lists(index), skip_special_tokens=True)

    def sample(self, prompts: Sequence[Prompt], n: int, cost: Cost, gen: GenerationSettings | None = None) -> Rows:
        """`n` complete samples per prompt, rows grouped by prompt, with `gen` (default: `self.gen`); the prompts are
        encoded once."""
        rows = self.start(prompts, cost, gen)
        rows = rows.select(torch.arange(len(prompts), device=self.device).repeat_interleave(n))
        return self.extend(rows, rows.max_new_tokens, cost)


def _held(rows: Rows) -> tuple[Cache, torch.Tensor, torch.Tensor, torch.Tensor]:
    """What this backend keeps in the rows it starts: KV cache, attention mask, next-token logits, last hidden."""
    if rows.cache is None or rows.attention_mask is None or rows.next_logits is None or rows.hidden is None:
        raise SpiError("these rows carry no KV cache (another backend started them): the transformers policy cannot")
    return rows.cache, rows.attention_mask, rows.next_logits, rows.hidden


def load_hf_policy(cfg: PolicyConfig, gen: GenerationConfig, seed: int = 0) -> HFPolicy:
    """Load the frozen policy named by `cfg.model` ('default', a local directory, or a hub id) on transformers."""
    source = resolve_model_source(cfg.model)
    device = resolve_device(cfg.device)
    dtype = getattr(torch, cfg.dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
        model = to_device(AutoModelForCausalLM.from_pretrained(source, dtype=dtype), device)
    except (OSError, ValueError) as exc:
        raise SpiError(f"could not load policy '{cfg.model}': {str(exc).splitlines()[0]}") from None
    return HFPolicy(model, tokenizer, gen, chat_template=cfg.chat_template, seed=seed)
