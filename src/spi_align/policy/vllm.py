"""The vLLM backend: the `Policy` protocol on vLLM's offline engine (`vllm.LLM`), prefix caching on.

Rows are token-id prefixes (prompt + response so far). Extending a chunk is one batched `generate` over every live
row: a token-id prompt per row, `max_tokens = L`, stops on the end-of-turn ids, the sampled token's raw log-prob
(`Rows.logprob`). vLLM keeps the KV cache itself: with automatic prefix caching a chunk finds the cached blocks of
its prefix (every whole block of prompt + earlier chunks) instead of re-encoding it; `prefix_cache` counts prompt
tokens read from the cache against those computed.

What this backend does not expose: hidden states (`has_hidden_states = False`; it is no
`core.interfaces.HiddenStatePolicy`). Guidance that reads the policy's own states (value heads, the reward head on
the policy) refuses through `core.interfaces.hidden_state_policy`, with one line naming what works here: text
scorers, the reward on partial text, a separate value model (`spi.value: model` on its own backbone), the
implicit-reward pair. vLLM's pooling runner could return last-token states, but only from a second engine that
re-encodes every prefix: not wired.

Sampling seeds: per-request seeds fail on CPU builds and cost a generator per row on GPUs, so rows draw from the
engine's own generator, which `reseed` resets in every worker (`collective_rpc`). That needs the engine core in this
process: `VLLM_ENABLE_V1_MULTIPROCESSING=0` is set unless the caller set it (which also spares callers vLLM's
`if __name__ == "__main__"` guard). Workers of tensor / pipeline parallel engines still run in their own processes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoTokenizer
from transformers import GenerationConfig as HFGenerationConfig

from spi_align.config import GenerationConfig, PolicyConfig
from spi_align.core.errors import SpiError
from spi_align.core.records import Cost, Prompt
from spi_align.core.rows import GenerationSettings, Rows
from spi_align.hf.batches import pad_token_id
from spi_align.hf.models import resolve_device, resolve_model_source
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


def _seed_worker(worker: Any, seed: int) -> None:
    """Runs inside every vLLM worker: restart its sampling generators from `seed`."""
    from vllm.utils.torch_utils import set_random_seed

    set_random_seed(seed)


class VLLMPolicy(ChatPrompts):
    """A frozen causal LM on vLLM's engine: rows are token-id prefixes, every chunk is one batched `generate`."""

    has_hidden_states = False
    """vLLM returns tokens and log-probs, not hidden states: value heads cannot read rows here."""

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
        the same tokens for the same calls."""
        self.choice_generator.manual_seed(seed)
        try:
            self.llm.collective_rpc(_seed_worker, args=(seed,))
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
        `rows`, with the rows' settings. A row stops at an end-of-turn token or at `max_new_tokens`."""
        from vllm.inputs import TokensPrompt

        gen = self.gen if rows.gen is None else rows.gen
        limit = rows.max_new_tokens
        live = (~rows.done & (rows.length < limit)).nonzero().squeeze(1).tolist()
        if not live:
            return rows
        response, length = rows.response.tolist(), rows.length.tolist()
        prompt_of = rows.prompt_index.tolist()
        requests, params, by_budget = [], [], {}
        for r in live:
            prefix = rows.prompt_tokens[prompt_of[r]] + response[r][: length[r]]
            requests.append(TokensPrompt(prompt_token_ids=prefix))
            budget = min(max_tokens, limit - length[r])
            if budget not in by_budget:
                by_budget[budget] = self.sampling_params(budget, gen=gen)
            params.append(by_budget[budget])
        with cost.timer("decode"):
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        self._count(outputs, cost)
        self._append(rows, [(r, out.outputs[0]) for r, out in zip(live, outputs, strict=True)], cost)
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
        for out in outputs:
            prompt, cached = len(out.prompt_token_ids), int(out.num_cached_tokens or 0)
            self.prefix_cache.requests += 1
            self.prefix_cache.prompt_tokens += prompt
            self.prefix_cache.cached_tokens += cached
            cost.count_forward("policy_prefill", prompt - cached)

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


def engine(cfg: PolicyConfig, source: str) -> Any:
    """Start vLLM's offline engine on `source` with `cfg.vllm`'s settings (prefix caching on, tokenizer skipped:
    prompts are token ids)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    try:
        from vllm import LLM
    except ImportError as exc:
        raise SpiError(
            f"policy.backend=vllm needs vLLM ({exc.msg}): pip install 'spi_align[vllm]' on CPUs, or the vllm package "
            "on GPUs"
        ) from None
    settings = cfg.vllm
    if settings.data_parallel_size > 1 and settings.distributed_executor_backend != "external_launcher":
        raise SpiError(
            "policy.vllm.data_parallel_size > 1 needs distributed_executor_backend=external_launcher under torchrun "
            "(vLLM's offline engine); or run one spi process per prompt shard"
        )
    kwargs = settings.engine_kwargs(cfg.dtype)
    log.info("starting vLLM on %s: %s", source, kwargs)
    try:
        return LLM(model=source, skip_tokenizer_init=True, **kwargs)
    except (ValueError, TypeError, OSError, RuntimeError) as exc:
        raise SpiError(f"vLLM could not start on '{cfg.model}': {str(exc).splitlines()[0]}") from None


def load_vllm_policy(cfg: PolicyConfig, gen: GenerationConfig, seed: int = 0) -> VLLMPolicy:
    """Load the frozen policy named by `cfg.model` ('default', a local directory, or a hub id) on vLLM."""
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
    return VLLMPolicy(llm, tokenizer, gen, generation, cfg.chat_template, seed, resolve_device(cfg.device))
