"""The vLLM backend: the `Policy` protocol on vLLM's offline engine (`vllm.LLM`), prefix caching on; with
`policy.vllm.hidden_states` (the default) also the `HiddenStatePolicy`, its states read from a second engine.

Rows are token-id prefixes (prompt + response so far). Extending a chunk is one batched `generate` over every live
row: a token-id prompt per row, `max_tokens = L`, stops on the end-of-turn ids, the sampled token's raw log-prob
(`Rows.logprob`). vLLM keeps the KV cache itself: with automatic prefix caching a chunk finds the cached blocks of
its prefix (every whole block of prompt + earlier chunks) instead of re-encoding it; `prefix_cache` counts prompt
tokens read from the cache against those computed.

Hidden states (`VLLMStatePolicy`). vLLM 0.32's generation engine returns tokens and log-probs, not final hidden
states (its `extract_hidden_states` speculative method writes chosen intermediate layers' states of each prompt to
files through a KV connector, for drafter training), so the states come from a second engine on the same weights:
vLLM's pooling runner (`runner="pooling"`, `convert="embed"`), token pooling (`token_embed`) with the pooler's
normalisation off, prefix caching on. A request returns the states of the positions it computed: vLLM skips the
prefix cache for token pooling unless the request asks otherwise (`skip_reading_prefix_cache=False`), and then
returns the uncached positions only, of which the last two are kept. So one request of prefix + end-of-turn token
gives both the row's state after its last token (`last_hidden`, what value heads read) and after the end token
(`peek_end_hidden` for the anchored values and the partial reward; `end_hidden` for the reward head on finished
rows); a sequence repeated in a batch (siblings that sampled the same chunk) is requested once.

Cost of a read. The state engine has cached every whole block of the prefixes it read before, so a read computes
the tokens since: the new chunk (L), the end token, and the prefix's last partial block (the cache holds whole
blocks only: on average half a block, recomputed by each of a parent's successors), never the whole prefix; billed
as "peek" forward tokens, counted in `states.prefix_cache`. vLLM's CPU attention takes blocks of multiples of 32
only, and its CPU default is 128, so the state engine takes 32 there (`CPU_STATE_BLOCK`) unless a block size is
set. On transformers the same read costs the end token alone (the policy's own pass left the chunk's states); here
the chunk is computed by both engines, so L + 1 + (the partial block) per row and chunk is the floor while they
share no KV cache. The state engine starts on the first read (so sampling with text guidance never starts it),
with the generation engine's settings overridden by `policy.vllm.state_engine`. Reading
values from a sequence-classification export of each head instead (vLLM's classify pooling) would run the same
backbone pass per request and give one fixed head's values rather than states: no faster, and no states to train
on. Passes over whole texts outside the search (round 0's teacher-forced prefix states, the reward head's text
scores, a value model on the policy's backbone) run `backbone`, a transformers copy of the weights loaded on first
use.

Sampling seeds: per-request seeds fail on CPU builds and cost a generator per row on GPUs, so rows draw from the
engine's own generator, which `reseed` resets in every worker (`collective_rpc`). That needs the engine core in this
process: `VLLM_ENABLE_V1_MULTIPROCESSING=0` is set unless the caller set it (which also spares callers vLLM's
`if __name__ == "__main__"` guard). Workers of tensor / pipeline parallel engines still run in their own processes.
Starting an engine in this process reseeds the global generators; the state engine and the transformers copy are
started with those generators saved and restored, so starting them mid-run leaves the sampled tokens unchanged.
"""

from __future__ import annotations

import logging
import os
import random
import re
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers import GenerationConfig as HFGenerationConfig

from spi_align.config import GenerationConfig, PolicyConfig
from spi_align.core.errors import SpiError
from spi_align.core.records import Cost, Prompt, billed
from spi_align.core.rows import GenerationSettings, Rows
from spi_align.hf.batches import BackboneRunner, pad_token_id
from spi_align.hf.models import backbone_of, first_line, resolve_device, resolve_model_source, to_device
from spi_align.policy.prompts import ChatPrompts, end_tokens

log = logging.getLogger(__name__)


@dataclass
class PrefixCacheStats:
    """Prompt tokens of every request sent to the engine: how many it found in its prefix cache."""

    requests: int = 0
    prompt_tokens: int = 0
    """Tokens of every request's prompt (prompt + response so far)."""
    cached_tokens: int = 0
    """Of those, tokens read from the prefix cache instead of computed."""

    @property
    def computed_tokens(self) -> int:
        """Prompt tokens the engine encoded (prefill)."""
        return self.prompt_tokens - self.cached_tokens

    @property
    def hit_rate(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "computed_tokens": self.computed_tokens, "hit_rate": self.hit_rate}

    def count(self, outputs: Sequence[Any]) -> int:
        """Add the requests of `outputs` (vLLM's request outputs); returns the prompt tokens they computed."""
        computed = 0
        for out in outputs:
            prompt, cached = len(out.prompt_token_ids), int(out.num_cached_tokens or 0)
            self.requests += 1
            self.prompt_tokens += prompt
            self.cached_tokens += cached
            computed += prompt - cached
        return computed


def _seed_worker(worker: Any, seed: int) -> None:
    """Runs inside every vLLM worker: restart its sampling generators from `seed`."""
    from vllm.utils.torch_utils import set_random_seed

    set_random_seed(seed)


class VLLMPolicy(ChatPrompts):
    """A frozen causal LM on vLLM's engine: rows are token-id prefixes, every chunk is one batched `generate`."""

    has_hidden_states = False
    """No states here (`policy.vllm.hidden_states: false`): value heads cannot read these rows (`VLLMStatePolicy`
    can)."""

    def __init__(
        self,
        llm: Any,
        tokenizer: Any,
        gen: GenerationConfig,
        generation_config: HFGenerationConfig | None,
        chat_template: bool = True,
        seed: int = 0,
        device: torch.device | None = None,
    ) -> None:
        self.llm = llm
        self.tokenizer = tokenizer
        self.gen = gen
        """Sampling settings, read at every call (so they may be swapped between calls)."""
        self.chat_template = chat_template and tokenizer.chat_template is not None
        self.device = device or torch.device("cpu")
        """Where `Rows` tensors and the models beside the policy (scorers, value models) live."""
        ends = end_tokens(tokenizer, generation_config, self.chat_template)
        self.end_id = ends.turn
        self.eos_list = list(ends.stop)
        """Every id that ends a row (`end_id` and the model's generation config's)."""
        self.eos_ids = torch.tensor(self.eos_list, device=self.device)
        self.pad_id = pad_token_id(tokenizer, self.end_id)
        self.max_context = int(llm.llm_engine.model_config.max_model_len)
        self.context_setting = "policy.vllm.max_model_len"
        self.choice_generator = torch.Generator(device="cpu")
        """For the search's own draws (softmax selection); the engine samples tokens with its own."""
        self.prefix_cache = PrefixCacheStats()
        self.reseed(seed)

    @property
    def max_new_tokens(self) -> int:
        return self.gen.max_new_tokens

    def reseed(self, seed: int) -> None:
        """Restart the sampling stream (the engine's workers and the search's generator): the same seed then gives
        the same tokens for the same calls. Any int is taken (a server's seeds are 63-bit, a request's may be
        negative): the workers get it modulo 2**32, the most NumPy's generator, which vLLM seeds too, takes."""
        self.choice_generator.manual_seed(seed)
        try:
            self.llm.collective_rpc(_seed_worker, args=(seed % 2**32,))
        except TypeError as exc:
            raise SpiError(
                f"cannot reseed vLLM's workers ({str(exc).splitlines()[0]}): run the engine core in this process "
                "(VLLM_ENABLE_V1_MULTIPROCESSING=0)"
            ) from None

    def sampling_params(self, max_tokens: int, n: int = 1, gen: GenerationSettings | None = None) -> Any:
        """vLLM's sampling parameters for `gen` (default: `self.gen`): stop only on the end-of-turn ids, raw log-prob
        of the sampled token, no detokenisation (responses are decoded here)."""
        from vllm import SamplingParams

        gen = self.gen if gen is None else gen
        sampled = gen.do_sample  # greedy: temperature 0, no top-k / top-p
        return SamplingParams(
            n=n,
            max_tokens=max_tokens,
            temperature=gen.temperature if sampled else 0.0,
            top_k=gen.top_k if sampled else 0,
            top_p=gen.top_p if sampled else 1.0,
            stop_token_ids=self.eos_list,
            ignore_eos=True,  # the tokenizer's eos may not end a turn; the end-of-turn ids above do
            logprobs=0,
            detokenize=False,
        )

    def start(self, prompts: Sequence[Prompt], cost: Cost, gen: GenerationSettings | None = None) -> Rows:
        """One empty row per prompt, to be sampled with `gen` (default: `self.gen`); token ids only: the engine
        encodes prefixes when it extends them."""
        gen = self.gen if gen is None else gen
        ids = self.checked_prompt_ids(prompts, gen.max_new_tokens)
        return Rows.begin(prompts, ids, gen.max_new_tokens, self.pad_id, self.device, gen)

    def extend(self, rows: Rows, max_tokens: int, cost: Cost) -> Rows:
        """Sample up to `max_tokens` more tokens for every unfinished row, in place, in one `generate`; returns
        `rows`, with the rows' settings. A row stops at an end-of-turn token or at `max_new_tokens`.

        Sampled rows that share their whole prefix (the K successors a search fans a parent out to) go as one
        request for that many samples: the engine computes the prefix's uncached tail once, not once per row, as
        best-of-N's one request per prompt does. Greedy rows go one request each (vLLM takes one greedy sample a
        request)."""
        from vllm.inputs import TokensPrompt

        gen = self.gen if rows.gen is None else rows.gen
        limit = rows.max_new_tokens
        live = (~rows.done & (rows.length < limit)).nonzero().squeeze(1).tolist()
        if not live:
            return rows
        response, length = rows.response.tolist(), rows.length.tolist()
        prompt_of = rows.prompt_index.tolist()
        groups: dict[tuple[Any, ...], list[int]] = {}  # (budget, ...) -> rows of one request
        for r in live:
            budget = min(max_tokens, limit - length[r])
            key = (budget, prompt_of[r], *response[r][: length[r]]) if gen.do_sample else (budget, r)
            groups.setdefault(key, []).append(r)
        requests, params, by_shape = [], [], {}
        for (budget, *_), members in groups.items():
            r = members[0]
            requests.append(TokensPrompt(prompt_token_ids=rows.prompt_tokens[prompt_of[r]] + response[r][: length[r]]))
            shape = (budget, len(members))
            if shape not in by_shape:
                by_shape[shape] = self.sampling_params(*shape, gen=gen)
            params.append(by_shape[shape])
        with cost.timer("decode"):
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        self._count(outputs, cost)
        pieces = [
            (r, completion)
            for members, out in zip(groups.values(), outputs, strict=True)
            for r, completion in zip(members, sorted(out.outputs, key=lambda c: c.index), strict=True)
        ]
        self._append(rows, pieces, cost)
        return rows

    def sample(self, prompts: Sequence[Prompt], n: int, cost: Cost, gen: GenerationSettings | None = None) -> Rows:
        """`n` complete samples per prompt, rows grouped by prompt, with `gen` (default: `self.gen`): one request per
        prompt with `n` samples."""
        from vllm.inputs import TokensPrompt

        gen = self.gen if gen is None else gen
        rows = self.start(prompts, cost, gen)
        rows = rows.select(torch.arange(len(prompts), device=self.device).repeat_interleave(n))
        requests = [TokensPrompt(prompt_token_ids=ids) for ids in rows.prompt_tokens]
        with cost.timer("decode"):
            outputs = self.llm.generate(requests, self.sampling_params(gen.max_new_tokens, n, gen), use_tqdm=False)
        self._count(outputs, cost)
        completions = [c for out in outputs for c in sorted(out.outputs, key=lambda c: c.index)]
        self._append(rows, list(enumerate(completions)), cost)
        return rows

    def _count(self, outputs: Sequence[Any], cost: Cost) -> None:
        """Prefix-cache statistics, and the prompt tokens the engine computed (not read from its prefix cache) as
        the cost's policy_prefill."""
        cost.count_forward("policy_prefill", self.prefix_cache.count(outputs))

    def _append(self, rows: Rows, pieces: Sequence[tuple[int, Any]], cost: Cost) -> None:
        """Append each completion's tokens to its row (one tensor write per field); count tokens and engine steps."""
        response, length = rows.response.tolist(), rows.length.tolist()
        done, logprob = rows.done.tolist(), rows.logprob.tolist()
        eos, longest = set(self.eos_list), 0
        prompt_of, per_prompt = rows.prompt_index.tolist(), [0] * len(rows.prompts)
        for r, completion in pieces:
            tokens = list(completion.token_ids)
            response[r][length[r] : length[r] + len(tokens)] = tokens
            length[r] += len(tokens)
            done[r] = bool(tokens) and tokens[-1] in eos
            logprob[r] += _logprob(completion)
            longest = max(longest, len(tokens))
            cost.tokens_generated += len(tokens)
            cost.count_forward("policy_decode", max(len(tokens) - 1, 0))  # the last sampled token is never fed
            per_prompt[prompt_of[r]] += len(tokens)
        cost.count_by_prompt(per_prompt)
        rows.response = torch.tensor(response, dtype=rows.response.dtype, device=self.device)
        rows.length = torch.tensor(length, dtype=rows.length.dtype, device=self.device)
        rows.done = torch.tensor(done, dtype=torch.bool, device=self.device)
        rows.logprob = torch.tensor(logprob, dtype=rows.logprob.dtype, device=self.device)
        cost.policy_forwards += longest  # engine steps: one per token position of the batch (prefill included)

    def texts(self, rows: Rows, index: torch.Tensor | None = None) -> list[str]:
        """Decode the responses of rows `index` (default: all), special tokens dropped."""
        return self.tokenizer.batch_decode(rows.token_lists(index), skip_special_tokens=True)


def _logprob(completion: Any) -> float:
    """Σ log π(token) of a completion's tokens (raw logits: before temperature and top-k / top-p)."""
    if completion.cumulative_logprob is not None:
        return float(completion.cumulative_logprob)
    if completion.logprobs is None:
        return 0.0
    return float(sum(step[t].logprob for t, step in zip(completion.token_ids, completion.logprobs, strict=True)))


@dataclass
class StateRead:
    """What the state engine returned for a batch of token-id sequences."""

    last: torch.Tensor
    """(n, H) fp32 states after each sequence's last token."""
    before: torch.Tensor
    """(n, H) fp32 states after the token before it, where `has_before` (zeros elsewhere)."""
    has_before: list[bool]
    """Whether the engine computed that position: a position read from its prefix cache has no state."""
    computed: int
    """Prompt tokens the engine computed (not read from its prefix cache)."""


class StateEngine:
    """The policy's hidden states at the end of token-id sequences, from vLLM's pooling runner on the policy's weights
    (`state_engine`): one request per distinct sequence, in one `encode` call; started on the first read. Each
    request returns the states of the positions the engine computed (token pooling, the prefix cache read), of
    which the last two are kept: the state after the sequence's last token, and the one before it."""

    def __init__(self, start: Callable[[], Any], device: torch.device) -> None:
        self._start = start
        self.device = device
        """Where the states are returned (the policy's `device`)."""
        self.llm: Any = None
        """The pooling engine, once started."""
        self.prefix_cache = PrefixCacheStats()
        """Tokens of every state request, and how many the engine read from its prefix cache."""

    def __call__(self, sequences: Sequence[Sequence[int]]) -> StateRead:
        """The states at the end of `sequences`; a sequence repeated in the batch is requested once."""
        if self.llm is None:
            with keeping_rng():
                self.llm = self._start()
        from vllm import PoolingParams, TokensPrompt

        slot: dict[tuple[int, ...], int] = {}
        of = [slot.setdefault(tuple(ids), len(slot)) for ids in sequences]
        requests = [TokensPrompt(prompt_token_ids=list(ids)) for ids in slot]
        # the computed positions' raw states: normalisation off (also the engine's default), and the prefix cache
        # read, which vLLM skips by default for token pooling (it would then return every position's state)
        params = PoolingParams(use_activation=False, skip_reading_prefix_cache=False)
        outputs = self.llm.encode(requests, params, pooling_task="token_embed", use_tqdm=False)
        computed = self.prefix_cache.count(outputs)
        tails = [torch.as_tensor(out.outputs.data)[-2:].float() for out in outputs]
        last = torch.stack([tail[-1] for tail in tails])
        before = torch.stack([tail[0] if len(tail) > 1 else torch.zeros_like(tail[0]) for tail in tails])
        index = torch.tensor(of)
        return StateRead(
            last[index].to(self.device),
            before[index].to(self.device),
            [len(tails[i]) > 1 for i in of],
            computed,
        )


class VLLMStatePolicy(VLLMPolicy):
    """`VLLMPolicy` that exposes the policy's hidden states (a `HiddenStatePolicy`): each read is one batch of
    requests to the state engine (the module docstring), billed as "peek" forward tokens."""

    has_hidden_states = True
    """Rows' states are read from the state engine: value heads, anchored values and the reward head run here."""

    def __init__(
        self,
        llm: Any,
        tokenizer: Any,
        gen: GenerationConfig,
        generation_config: HFGenerationConfig | None,
        states: StateEngine,
        load_backbone: Callable[[], PreTrainedModel],
        chat_template: bool = True,
        seed: int = 0,
        device: torch.device | None = None,
    ) -> None:
        super().__init__(llm, tokenizer, gen, generation_config, chat_template, seed, device)
        self.states = states
        self._load_backbone = load_backbone
        self._peeked: tuple[weakref.ref, weakref.ref, weakref.ref, torch.Tensor] | None = None
        self._peeking = False
        """Whether peeks were asked: `last_hidden` then reads the peek with the last state."""

    @property
    def hidden_size(self) -> int:
        return int(self.llm.llm_engine.model_config.get_hidden_size())

    def context_left(self, prompt_tokens: int) -> int | None:
        """New tokens that fit after the prompt with room for the end-of-turn token a state read appends to a full
        row (the state engine refuses a request longer than its context)."""
        left = super().context_left(prompt_tokens)
        return None if left is None else left - 1

    @cached_property
    def backbone(self) -> PreTrainedModel:
        """The policy's transformer on transformers, a copy of the weights loaded on first use: it runs the models
        that share the policy's backbone (the reward head's text scores) and teacher-forced passes over whole texts
        (round 0's prefix states), never the search."""
        with keeping_rng():
            return self._load_backbone()

    @cached_property
    def runner(self) -> BackboneRunner:
        """Runs `backbone` on padded batches."""
        return BackboneRunner(self.backbone)

    def last_hidden(self, rows: Rows) -> torch.Tensor:
        """(R, H) the state after each row's last token: read once per rows' state and kept in `rows.hidden` (an
        extend clears it). Once this policy has been asked for peeks, the read is the peek's (prefix + end token),
        which gives both states from one request per row, so the peek that follows in the same guidance is free."""
        if rows.hidden is None:
            if self._peeking:
                self.peek_end_hidden(rows)
            else:
                rows.hidden = self._read(rows, range(rows.size), close=False, cost=billed()).last
        assert rows.hidden is not None  # for the type checker: a peek sets it
        return rows.hidden

    def end_hidden(self, rows: Rows, index: torch.Tensor, cost: Cost) -> torch.Tensor:
        """States (len(index), H) after the end-of-turn token of rows `index`, which must be finished or at
        max_new_tokens: a row that ended itself is read as it is, the others closed with the end token and marked
        done (never extend them again)."""
        with cost.timer("reward"):
            states = self._read(rows, index.tolist(), close=True, cost=cost).last
        cost.policy_forwards += 1
        rows.done = rows.done.clone()  # a new tensor: a peek at these rows before is stale
        rows.done[index] = True
        return states

    def peek_end_hidden(self, rows: Rows) -> torch.Tensor:
        """States (R, H) each row would have after the end-of-turn token, without ending any row (a row that ended
        itself: its own state). One request per row that has not ended, of prefix + end token; it also gives the row's
        last state, kept in `rows.hidden` (so value heads on the same rows read nothing more). With those states
        known, rows that ended themselves need no request. Peeking again at the same rows in the same state (the
        anchored values and the partial reward both read these in one chunk) returns the first peek's states."""
        memo = self._peeked
        if memo is not None and memo[0]() is rows and memo[1]() is rows.length and memo[2]() is rows.done:
            return memo[3]
        self._peeking = True
        done = rows.done.tolist()
        if rows.hidden is not None:
            states = rows.hidden.float().clone()
            open_rows = [r for r in range(rows.size) if not done[r]]
            if open_rows:
                states[open_rows] = self._read(rows, open_rows, close=True, cost=billed()).last
        else:
            read = self._read(rows, range(rows.size), close=True, cost=billed())
            states, last = read.last, read.last.clone()
            unread = []
            for r in range(rows.size):
                if done[r]:
                    continue  # read as it is: its peek is its last state
                if read.has_before[r]:
                    last[r] = read.before[r]
                else:  # the prefix was cached to its last token: its state needs a request of its own
                    unread.append(r)
            if unread:
                last[unread] = self._read(rows, unread, close=False, cost=billed()).last
            rows.hidden = last
        self._peeked = (weakref.ref(rows), weakref.ref(rows.length), weakref.ref(rows.done), states)
        return states

    def _read(self, rows: Rows, index: Sequence[int], close: bool, cost: Cost | None) -> StateRead:
        """The state engine's read of rows `index` (prompt + response; with `close`, the rows that have not ended
        get the end-of-turn token); the tokens it computed billed to `cost` as "peek"."""
        response, length, done = rows.response.tolist(), rows.length.tolist(), rows.done.tolist()
        prompt_of = rows.prompt_index.tolist()
        end = [self.end_id]
        read = self.states(
            [
                rows.prompt_tokens[prompt_of[r]] + response[r][: length[r]] + (end if close and not done[r] else [])
                for r in index
            ]
        )
        if cost is not None:
            cost.count_forward("peek", read.computed)
        return read

    def _append(self, rows: Rows, pieces: Sequence[tuple[int, Any]], cost: Cost) -> None:
        super()._append(rows, pieces, cost)
        rows.hidden = None  # the rows moved on: their states are read again when asked


@contextmanager
def keeping_rng() -> Iterator[None]:
    """Run the block with Python's, NumPy's and torch's global generators saved and restored after: vLLM reseeds
    them when an engine starts in this process, and the generation engine samples from torch's."""
    saved = random.getstate(), np.random.get_state(), torch.random.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])
        torch.random.set_rng_state(saved[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def import_vllm() -> Any:
    """The `vllm` module, or the one-line refusal with the install command. Sets `VLLM_ENABLE_V1_MULTIPROCESSING=0`
    first unless the caller set it (the engine core in this process: the module docstring)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        import vllm
    except ImportError as exc:
        raise SpiError(
            f"policy.backend=vllm needs vLLM ({exc.msg}): pip install 'spi_align[vllm]' on CPUs, or the vllm package "
            "on GPUs"
        ) from None
    return vllm


_MEMORY = re.compile(r"out of memory|\bmemory\b", re.IGNORECASE)
_RESERVING = re.compile(r"less than (desired|requested)|Free memory on device", re.IGNORECASE)


def start_failure(exc: BaseException, model: str, settings: str, pooling: bool = False) -> SpiError:
    """The one line for an engine that failed to start: out of memory (the memory settings under `settings` to
    lower), a model vLLM cannot pool (`pooling`: the setting that turns the state engine off), else vLLM's own first
    line."""
    reason, which = first_line(exc), "state engine" if pooling else "engine"
    if isinstance(exc, MemoryError | torch.OutOfMemoryError) or _MEMORY.search(str(exc)):
        if _RESERVING.search(str(exc)):
            lower = (
                f"it reserves more than is free: lower {settings}.gpu_memory_utilization on GPUs (the generation and "
                f"state engines each take their share) or {settings}.kv_cache_memory_bytes on CPUs"
            )
        else:
            lower = (
                f"lower {settings}.max_model_len (the longest request its KV cache must hold), or give that cache "
                f"more: {settings}.kv_cache_memory_bytes on CPUs, {settings}.gpu_memory_utilization on GPUs"
            )
        return SpiError(f"vLLM's {which} on '{model}' is out of memory ({reason}): {lower}")
    if pooling:
        return SpiError(
            f"vLLM cannot pool the hidden states of '{model}' ({reason}): set policy.vllm.hidden_states=false (then "
            "guide with text, or a separate value model: spi.value=model) or policy.backend=hf"
        )
    return SpiError(f"vLLM could not start on '{model}': {reason}")


def _checked_parallelism(cfg: PolicyConfig) -> None:
    settings = cfg.vllm
    if settings.data_parallel_size > 1 and settings.distributed_executor_backend != "external_launcher":
        raise SpiError(
            "policy.vllm.data_parallel_size > 1 needs distributed_executor_backend=external_launcher under torchrun "
            "(vLLM's offline engine); or run one spi process per prompt shard"
        )


def engine(cfg: PolicyConfig, source: str) -> Any:
    """Start vLLM's offline engine on `source` with `cfg.vllm`'s settings (prefix caching on, tokenizer skipped:
    prompts are token ids)."""
    vllm = import_vllm()
    _checked_parallelism(cfg)
    kwargs = cfg.vllm.engine_kwargs(cfg.dtype)
    log.info("starting vLLM on %s: %s", source, kwargs)
    try:
        return vllm.LLM(model=source, skip_tokenizer_init=True, **kwargs)
    except (ValueError, TypeError, OSError, RuntimeError, MemoryError, NotImplementedError) as exc:
        raise start_failure(exc, cfg.model, "policy.vllm") from None


CPU_STATE_BLOCK = 32
"""The state engine's KV-cache block on CPUs unless one is set: the smallest vLLM's CPU attention takes (its kernels
take multiples of 32; vLLM's CPU default is 128). A state read recomputes its prefix's last partial block (the prefix
cache holds whole blocks only), so smaller blocks recompute less. vLLM's GPU default, 16, is kept."""


def state_engine(cfg: PolicyConfig, source: str) -> Any:
    """Start the state engine on `source`: vLLM's pooling runner (embedding conversion, token pooling with the prefix
    cache read, no normalisation) with the generation engine's settings overridden by `cfg.vllm.state_engine`, and
    `CPU_STATE_BLOCK` on CPUs when neither sets `block_size`. Its tokenizer is loaded (vLLM's pooling front end needs
    one), though requests are token ids."""
    vllm = import_vllm()
    _checked_parallelism(cfg)
    from vllm.config import PoolerConfig
    from vllm.platforms import current_platform

    kwargs = cfg.vllm.state_engine_kwargs(cfg.dtype)
    if "block_size" not in kwargs and current_platform.is_cpu():
        kwargs["block_size"] = CPU_STATE_BLOCK
    log.info("starting vLLM's state engine (pooling) on %s: %s", source, kwargs)
    pooler = PoolerConfig(task="token_embed", seq_pooling_type="LAST", tok_pooling_type="ALL", use_activation=False)
    try:
        llm = vllm.LLM(model=source, runner="pooling", convert="embed", pooler_config=pooler, **kwargs)
    except (ValueError, TypeError, OSError, RuntimeError, MemoryError, NotImplementedError) as exc:
        raise start_failure(exc, cfg.model, "policy.vllm.state_engine", pooling=True) from None
    if "token_embed" not in llm.supported_tasks:
        raise start_failure(ValueError(f"its pooling tasks are {list(llm.supported_tasks)}"), cfg.model, "", True)
    return llm


def load_backbone(source: str, dtype: str, device: torch.device, model: str) -> PreTrainedModel:
    """The transformers backbone of the policy `source` (frozen, eval mode, on `device`)."""
    try:
        causal = to_device(AutoModelForCausalLM.from_pretrained(source, dtype=getattr(torch, dtype)), device)
    except (OSError, ValueError) as exc:
        raise SpiError(f"could not load the transformers copy of policy '{model}': {first_line(exc)}") from None
    return backbone_of(causal.eval().requires_grad_(False))


def load_vllm_policy(cfg: PolicyConfig, gen: GenerationConfig, seed: int = 0) -> VLLMPolicy:
    """Load the frozen policy named by `cfg.model` ('default', a local directory, or a hub id) on vLLM: a
    `VLLMStatePolicy` with `policy.vllm.hidden_states`, else a `VLLMPolicy`."""
    source = resolve_model_source(cfg.model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        raise SpiError(f"could not load the tokenizer of policy '{cfg.model}': {str(exc).splitlines()[0]}") from None
    try:
        generation = HFGenerationConfig.from_pretrained(source)
    except OSError:
        generation = None
    llm = engine(cfg, source)
    device = resolve_device(cfg.device)
    if not cfg.vllm.hidden_states:
        return VLLMPolicy(llm, tokenizer, gen, generation, cfg.chat_template, seed, device)
    states = StateEngine(lambda: state_engine(cfg, source), device)
    backbone = lambda: load_backbone(source, cfg.dtype, device, cfg.model)  # noqa: E731
    return VLLMStatePolicy(llm, tokenizer, gen, generation, states, backbone, cfg.chat_template, seed, device)
