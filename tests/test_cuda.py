"""The transformers backend on a GPU in bf16: sampling, best-of-N and the chunk search with value heads on CUDA.

Marked `cuda`: `scripts/gpu_check.sh` runs these on a lent GPU machine; they skip, with the reason, without one.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from conftest import make_tiny_causal_lm
from spi_align.config import GenerationConfig, PolicyConfig
from spi_align.core.records import Cost, Prompt
from spi_align.policy import HFPolicy
from spi_align.search import BestOfN
from spi_align.search.beam import ChunkBeamSearch
from spi_align.values import HeadStack, ValueHead

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")]

PROMPTS = [Prompt("a", "Name a colour."), Prompt("b", "Say hello in French."), Prompt("c", "Count to three.")]


class Length:
    name = "length"

    def score(self, prompts: Any, responses: Any) -> list[float]:
        return [float(len(r)) for r in responses]


def search_on(policy: HFPolicy) -> list[Any]:
    head = ValueHead(policy.hidden_size).eval()
    stack = HeadStack([head], [1.0]).to(policy.device)
    search = ChunkBeamSearch(policy, lambda rows: stack(rows.hidden), Length(), width=2, successors=4, chunk=4)
    return search.run(PROMPTS, Cost())


def test_tiny_policy_samples_and_searches_on_cuda_in_bf16(smol_tokenizer: Any) -> None:
    model = make_tiny_causal_lm(smol_tokenizer).to("cuda", torch.bfloat16)
    policy = HFPolicy(model, smol_tokenizer, GenerationConfig(max_new_tokens=16))
    rows = policy.sample(PROMPTS, 4, Cost())
    assert rows.response.device.type == "cuda" and rows.hidden.dtype == torch.bfloat16
    assert rows.size == 12 and bool((rows.length > 0).all())
    results = search_on(policy)
    assert all(len(r.candidates) >= 8 and r.chosen.score == max(c.score for c in r.candidates) for r in results)


def test_softmax_selection_runs_with_the_policy_on_cuda(smol_tokenizer: Any) -> None:
    """The softmax draw reads probabilities on the CPU: it draws with the policy's CPU generator, not the CUDA one
    that samples tokens."""
    model = make_tiny_causal_lm(smol_tokenizer).to("cuda", torch.bfloat16)
    policy = HFPolicy(model, smol_tokenizer, GenerationConfig(max_new_tokens=16))
    search = ChunkBeamSearch(
        policy, lambda rows: rows.hidden.float().mean(-1), Length(), width=2, successors=4, chunk=4, selection="softmax"
    )
    assert all(len(r.candidates) >= 8 for r in search.run(PROMPTS, Cost()))


@pytest.mark.slow
def test_default_policy_best_of_n_and_search_on_cuda(smol_policy_dir: Any) -> None:
    from spi_align.policy.hf import load_hf_policy

    policy = load_hf_policy(PolicyConfig(device="cuda", dtype="bfloat16"), GenerationConfig(max_new_tokens=32))
    cost = Cost()
    results = BestOfN(policy, Length(), 16).run(PROMPTS, cost)
    assert cost.tokens_generated == sum(c.num_tokens for r in results for c in r.candidates)
    assert all(r.chosen.text.strip() for r in results)  # the real model answers in words
    assert all(r.chosen.score == max(c.score for c in r.candidates) for r in search_on(policy))
