"""Recorded search trees (`search/trace.py`): every candidate is rebuilt from its chunks, the selection the trace
shows is the one the search made, every value function's term adds up to the guidance, and recording runs no
forward pass (the cost counters are equal with recording on and off)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import make_policy
from mocks.scorers import CountScorer
from spi_align.core.records import Candidate, Cost, Prompt, SearchResult
from spi_align.search.beam import ChunkBeamSearch
from spi_align.search.trace import compact_float
from spi_align.search.tree import TreeSampling
from spi_align.values.guide import ValueModelGuide
from spi_align.values.heads import HeadStack, ValueHead
from spi_align.values.reward_guide import TextPartialReward, weighted_sum
from test_forward_tokens import text_reward, value_model
from test_row_reward import setup

PROMPTS = [Prompt("a", "Name three colours."), Prompt("b", "Write a poem about the sea.")]


def path(trace: dict, node: int) -> list[int]:
    """The nodes from the first chunk down to `node`."""
    out = []
    while node >= 0:
        out.append(node)
        node = trace["parent"][node]
    return out[::-1]


def children(trace: dict, node: int) -> list[int]:
    return [i for i, p in enumerate(trace["parent"]) if p == node]


def depth(trace: dict, node: int) -> int:
    return len(path(trace, node))


def check_candidates(result: SearchResult) -> dict:
    """The trace's ended nodes are the result's candidates, rebuilt token for token and text for text."""
    trace = result.trace
    assert trace is not None
    json.dumps(trace, allow_nan=False)  # ids, floats and None only
    ended = [n for n, c in enumerate(trace["candidate"]) if c is not None]
    assert sorted(trace["candidate"][n] for n in ended) == list(range(len(result.candidates)))
    for n in ended:
        cand = result.candidates[trace["candidate"][n]]
        nodes = path(trace, n)
        assert [t for i in nodes for t in trace["tokens"][i]] == cand.token_ids
        assert "".join(trace["text"][i] for i in nodes) == cand.text
        assert trace["finished"][n] == int(cand.finished) and trace["kept"][n] is None
        assert trace["score"][n] == compact_float(cand.score)
        assert not children(trace, n)
    assert result.candidates[trace["candidate"][trace["chosen"]]] is result.chosen
    return trace


def test_beam_trace_rebuilds_candidates_and_shows_the_selection(tiny_causal_lm, smol_tokenizer):
    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=12)
    policy.eos_ids = torch.arange(len(smol_tokenizer) // 12)  # some candidates end early, at different chunks
    heads = [ValueHead(policy.hidden_size), ValueHead(policy.hidden_size)]
    for head in heads:
        torch.nn.init.normal_(head.output.weight, std=1.0)
    stack = HeadStack(heads, [0.5, 2.0])  # linear heads: one fused mat-vec, taken apart for the trace
    search = ChunkBeamSearch(
        policy, lambda rows: stack(rows.hidden), CountScorer(), width=2, successors=3, chunk=4, selection="top"
    )
    results = search.run(PROMPTS, Cost())
    finished_early = 0
    for result in results:
        trace = check_candidates(result)
        assert trace["weights"] == {"V_0": 0.5, "V_1": 2.0}
        assert trace["parent"][:6] == [-1] * 6  # the first step: W·K chunks from the prompt
        ranked = [n for n, v in enumerate(trace["value"]) if v is not None]
        for n in ranked:
            total = sum(w * trace["terms"][name][n] for name, w in trace["weights"].items())
            assert total == pytest.approx(trace["value"][n], abs=1e-4)
            assert len(children(trace, n)) == (3 if trace["kept"][n] else 0)
        for level in {depth(trace, n) for n in ranked}:
            at = [n for n in ranked if depth(trace, n) == level]
            kept = [n for n in at if trace["kept"][n]]
            assert len(kept) == min(2, len(at))
            assert min(trace["value"][n] for n in kept) >= max(trace["value"][n] for n in at if n not in kept)
        assert all(c is None for c in trace["cluster"])  # top-W: no clusters
        finished_early += sum(f == 1 for f in trace["finished"])
    assert finished_early > 0


def test_diversity_clusters_are_recorded(tiny_causal_lm, smol_tokenizer):
    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=12)
    search = ChunkBeamSearch(
        policy, lambda rows: rows.logprob, CountScorer(), width=2, successors=2, chunk=4, selection="diversity-parent"
    )
    for result in search.run(PROMPTS, Cost()):
        trace = check_candidates(result)
        ranked = [n for n, v in enumerate(trace["value"]) if v is not None]
        assert "terms" not in trace  # a plain function reports no terms
        for n in ranked:
            siblings = [m for m in ranked if trace["parent"][m] == trace["parent"][n]]
            assert trace["cluster"][n] == min(siblings)  # keyed by parent: the first sibling names the cluster
        # diversity-first: the two kept nodes of a step after the first continue different parents
        second = [n for n in ranked if depth(trace, n) == 2 and trace["kept"][n]]
        assert len({trace["parent"][n] for n in second}) == 2


def test_recording_runs_no_extra_forward(tiny_causal_lm, smol_tokenizer):
    """A value model (own KV cache) and a text reward on partial responses guide; the counters and the answers are
    the same with recording on and off, and every value function's term is in the trace."""
    values, reward = value_model(smol_tokenizer), text_reward(smol_tokenizer)
    runs = {}
    for trace in (True, False):
        policy, _, _ = setup(tiny_causal_lm, smol_tokenizer, max_new_tokens=9, end_rate=0.1)  # same seeds each time
        guide = weighted_sum(
            [(1.0, ValueModelGuide([values], [1.0], smol_tokenizer)), (0.5, TextPartialReward(reward, policy))]
        )
        cost = Cost()
        search = ChunkBeamSearch(policy, guide, reward, width=2, successors=2, chunk=3, trace=trace)
        runs[trace] = (search.run(PROMPTS, cost), cost)
    (on, cost_on), (off, cost_off) = runs[True], runs[False]
    assert cost_on.forward_tokens == cost_off.forward_tokens and cost_on.total_forward_tokens > 0
    for counter in ("tokens_generated", "policy_forwards", "value_calls", "reward_calls"):
        assert getattr(cost_on, counter) == getattr(cost_off, counter), counter
    assert [r.chosen.text for r in on] == [r.chosen.text for r in off]
    assert all(r.trace is None and "trace" not in r.to_record() for r in off)
    for result in on:
        trace = check_candidates(result)
        assert result.to_record()["trace"] is trace
        assert trace["weights"] == {"V_0": 1.0, "R_partial": 0.5}
        for n, value in enumerate(trace["value"]):
            if value is not None:
                terms = trace["terms"]["V_0"][n] + 0.5 * trace["terms"]["R_partial"][n]
                assert terms == pytest.approx(value, abs=1e-4)


def test_tree_rollouts_record_their_branches(tiny_causal_lm, smol_tokenizer):
    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=8)
    policy.eos_ids = torch.arange(len(smol_tokenizer) // 3)  # about half the first chunks end early
    results = TreeSampling(policy, [3, 2], chunk=2).run(PROMPTS, Cost())
    for result in results:
        trace = check_candidates(result)
        first = children(trace, -1)
        assert len(first) == 3 and all(v is None for v in trace["value"])
        for n in first:
            went_on = trace["kept"][n] == 1
            assert len(children(trace, n)) == (2 if went_on else 0)
            assert went_on == (trace["candidate"][n] is None)
        assert len(trace["parent"]) == 3 + 2 * sum(trace["kept"][n] == 1 for n in first)


def test_a_record_without_a_trace_is_unchanged():
    cand = Candidate(text="hi", num_tokens=1, finished=True, score=1.0, token_ids=[5])
    record = SearchResult(Prompt("a", "q"), cand, [cand]).to_record()
    assert set(record) == {"id", "prompt", "response", "score", "candidates"}
