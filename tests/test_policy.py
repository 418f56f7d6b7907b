"""The transformers backend: chunked continuation with KV reuse must equal one uninterrupted generation."""

from __future__ import annotations

import pytest
import torch

from conftest import make_policy
from spi_align.core.errors import SpiError
from spi_align.core.records import Cost, Prompt
from spi_align.policy import HFPolicy

PROMPTS = [
    Prompt("a", "Name three colours."),
    Prompt("b", "Write a short poem about the sea and the wind at night."),
    Prompt("c", "Hi"),
]


def run_chunks(policy: HFPolicy, chunk: int, n: int = 1) -> list[list[int]]:
    cost = Cost()
    rows = policy.start(PROMPTS, cost)
    rows = rows.select(torch.arange(len(PROMPTS)).repeat_interleave(n))
    while not bool((rows.done | (rows.length >= policy.gen.max_new_tokens)).all()):
        policy.extend(rows, chunk, cost)
    return rows.token_lists()


def test_chunked_greedy_equals_generate(tiny_causal_lm, smol_tokenizer):
    policy = make_policy(tiny_causal_lm, smol_tokenizer, do_sample=False)
    chunked = run_chunks(policy, chunk=5)
    smol_tokenizer.padding_side = "left"
    texts = [policy.format_prompt(p) for p in PROMPTS]
    enc = smol_tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = tiny_causal_lm.generate(
        **enc, max_new_tokens=24, do_sample=False, eos_token_id=policy.eos_ids.tolist(), pad_token_id=policy.pad_id
    )
    reference = out[:, enc["input_ids"].shape[1] :].tolist()
    for got, ref in zip(chunked, reference, strict=True):
        assert got == ref[: len(got)]
        assert all(t == policy.pad_id for t in ref[len(got) :])


def test_same_seed_same_tokens_whatever_the_chunking(tiny_causal_lm, smol_tokenizer):
    one = run_chunks(make_policy(tiny_causal_lm, smol_tokenizer, do_sample=True, seed=7), chunk=24, n=2)
    many = run_chunks(make_policy(tiny_causal_lm, smol_tokenizer, do_sample=True, seed=7), chunk=3, n=2)
    other = run_chunks(make_policy(tiny_causal_lm, smol_tokenizer, do_sample=True, seed=8), chunk=3, n=2)
    assert one == many
    assert one != other


def test_row_selection_continues_the_selected_prefix(tiny_causal_lm, smol_tokenizer):
    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=12, do_sample=False)
    cost = Cost()
    rows = policy.extend(policy.start(PROMPTS, cost), 4, cost)
    rows = rows.select(torch.tensor([1, 1, 0]))
    policy.extend(rows, 8, cost)
    tokens = rows.token_lists()
    assert tokens[0] == tokens[1]
    alone = run_chunks(make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=12, do_sample=False), chunk=12)
    assert tokens[2] == alone[0]
    assert rows.prompt_index.tolist() == [1, 1, 0]


def test_hidden_state_is_that_of_the_last_token(tiny_causal_lm, smol_tokenizer):
    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=6, do_sample=False)
    cost = Cost()
    rows = policy.extend(policy.start(PROMPTS[:1], cost), 6, cost)
    prompt_ids = smol_tokenizer(policy.format_prompt(PROMPTS[0]), add_special_tokens=False)["input_ids"]
    full = torch.tensor([prompt_ids + rows.token_lists()[0]])
    with torch.no_grad():
        expected = tiny_causal_lm.base_model(input_ids=full).last_hidden_state[0, -1]
    torch.testing.assert_close(rows.hidden[0], expected, atol=1e-4, rtol=1e-4)


def test_end_token_stops_a_row_and_counts_cost(tiny_causal_lm, smol_tokenizer):
    greedy = run_chunks(make_policy(tiny_causal_lm, smol_tokenizer, do_sample=False), chunk=24)[0]
    policy = make_policy(tiny_causal_lm, smol_tokenizer, do_sample=False)
    stop = greedy[2]
    policy.eos_ids = torch.tensor([stop])
    cost = Cost()
    rows = policy.extend(policy.start(PROMPTS[:1], cost), 24, cost)
    first = greedy.index(stop) + 1
    assert rows.length.tolist() == [first]
    assert rows.done.tolist() == [True]
    assert cost.tokens_generated == first
    assert cost.policy_forwards == 1 + first


def test_prompt_longer_than_context_is_one_clear_error(tiny_causal_lm, smol_tokenizer):
    policy = make_policy(tiny_causal_lm, smol_tokenizer, do_sample=False)
    policy.max_context = 40
    with pytest.raises(SpiError, match="exceeds the model's context"):
        policy.start([Prompt("long", "word " * 100)], Cost())


def test_two_searches_on_one_policy_keep_their_own_settings(tiny_causal_lm, smol_tokenizer):
    """Settings travel with the rows a search starts, never through the shared policy: two searches interleaved on
    one policy (greedy 4 tokens; the default sampling, 24) each sample with their own, and the policy's default is
    untouched."""
    from spi_align.config import GenerationConfig
    from spi_align.search.best_of_n import PlainSampling

    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=24)
    default = policy.gen
    greedy = GenerationConfig(max_new_tokens=4, do_sample=False)
    reference = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=4, do_sample=False)
    want = run_chunks(reference, chunk=4)

    cost = Cost()
    short = policy.start(PROMPTS, cost, greedy)
    long = policy.start(PROMPTS, cost)
    assert (short.max_new_tokens, long.max_new_tokens) == (4, 24)
    policy.extend(long, 2, cost)
    policy.extend(short, 24, cost)
    policy.extend(long, 24, cost)
    assert short.token_lists() == want  # greedy, at most 4 tokens, though the other search samples 24
    assert max(long.length.tolist()) > 4 and policy.gen is default

    results = PlainSampling(policy).run(PROMPTS, Cost(), greedy)
    assert [r.chosen.token_ids for r in results] == want
    assert policy.gen is default
    again = PlainSampling(policy).run(PROMPTS, Cost())
    assert max(r.chosen.num_tokens for r in again) > 4
