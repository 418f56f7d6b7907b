"""Selection rules (hand-checked), beam bookkeeping and budgets, and that value guidance steers the search."""

from __future__ import annotations

import torch

from conftest import make_policy
from mocks.scorers import CountScorer
from spi_align.core.records import Cost, Prompt
from spi_align.search import BestOfN
from spi_align.search.beam import ChunkBeamSearch
from spi_align.search.selection import diversity_first, softmax_sample, top_w

PROMPTS = [Prompt("a", "Name three colours."), Prompt("b", "Write a poem about the sea."), Prompt("c", "Hi")]


def test_top_w_takes_highest_values_lower_index_on_ties():
    assert top_w(torch.tensor([1.0, 3.0, 3.0, 2.0]), 3) == [1, 2, 3]


def test_diversity_first_places_every_cluster_before_any_second_member():
    values = torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0])
    keys = ["a", "a", "b", "c", "b"]
    # clusters a:{0,1} b:{2,4} c:{3}; their best members 0, 2, 3 come first, by value
    assert diversity_first(values, keys, 3) == [0, 2, 3]
    # then the second round, best first: 1 (4.0) before 4 (1.0)
    assert diversity_first(values, keys, 5) == [0, 2, 3, 1, 4]
    # plain top-W would keep the duplicate of cluster a instead
    assert top_w(values, 3) == [0, 1, 2]


def test_diversity_first_with_one_cluster_falls_back_to_value_order():
    assert diversity_first(torch.tensor([1.0, 9.0, 5.0]), ["x", "x", "x"], 2) == [1, 2]


def test_softmax_sampling_is_distinct_and_follows_temperature():
    gen = torch.Generator().manual_seed(0)
    values = torch.tensor([0.0, 0.0, 10.0, 0.0])
    picks = softmax_sample(values, 2, temperature=0.1, generator=gen)
    assert len(set(picks)) == 2 and picks[0] == 2
    counts = torch.zeros(4)
    for _ in range(400):
        counts[softmax_sample(values, 1, temperature=100.0, generator=gen)[0]] += 1
    assert counts.min() > 60  # near uniform at high temperature


def test_beam_spends_exactly_the_best_of_n_budget(tiny_causal_lm, smol_tokenizer):
    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=12)
    policy.eos_ids = torch.tensor([-1])  # nothing ends early: every candidate runs to max_new_tokens
    beam_cost, bon_cost = Cost(), Cost()
    beam = ChunkBeamSearch(policy, lambda rows: rows.logprob, CountScorer(), width=2, successors=3, chunk=4)
    results = beam.run(PROMPTS, beam_cost)
    BestOfN(policy, CountScorer(), n=6).run(PROMPTS, bon_cost)
    assert beam_cost.tokens_generated == bon_cost.tokens_generated == len(PROMPTS) * 6 * 12
    assert beam_cost.policy_forwards == bon_cost.policy_forwards == 1 + 12
    assert beam_cost.value_calls == len(PROMPTS) * 6 * 2  # scored after chunks 1 and 2; chunk 3 ends all
    for result in results:
        assert len(result.candidates) == 6
        assert all(c.num_tokens == 12 and not c.finished for c in result.candidates)
        assert result.chosen.score == max(c.score for c in result.candidates)


def test_finished_candidates_stay_in_the_pool(tiny_causal_lm, smol_tokenizer):
    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=16)
    # a tiny random model samples near-uniformly: making ~10% of the vocabulary "end" tokens
    # lets candidates finish at different chunks
    policy.eos_ids = torch.arange(len(smol_tokenizer) // 10)
    results = ChunkBeamSearch(policy, None, CountScorer(), width=2, successors=2, chunk=4).run(PROMPTS[:1], Cost())
    cands = results[0].candidates
    assert any(c.finished for c in cands)
    assert all(c.finished or c.num_tokens == 16 for c in cands)
    assert len({c.num_tokens for c in cands}) > 1


def test_value_guidance_steers_toward_what_the_value_favours(tiny_causal_lm, smol_tokenizer):
    vocab = smol_tokenizer.convert_ids_to_tokens(list(range(len(smol_tokenizer))))
    has_e = torch.tensor([("e" in (t or "")) for t in vocab], dtype=torch.float32)

    def e_tokens(rows) -> torch.Tensor:
        counted = has_e[rows.response].clone()
        counted[torch.arange(rows.response.shape[1])[None, :] >= rows.length[:, None]] = 0
        return counted.sum(1)

    def mean_e_share(results) -> float:
        cands = [c for r in results for c in r.candidates]
        return float(sum(has_e[c.token_ids].mean() for c in cands) / len(cands))

    guided = ChunkBeamSearch(
        make_policy(tiny_causal_lm, smol_tokenizer), e_tokens, CountScorer(), width=2, successors=4, chunk=4
    ).run(PROMPTS, Cost())
    unguided = BestOfN(make_policy(tiny_causal_lm, smol_tokenizer), CountScorer(), n=8).run(PROMPTS, Cost())
    assert mean_e_share(guided) > mean_e_share(unguided) + 0.15  # measured: 0.74 vs 0.53
