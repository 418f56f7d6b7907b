"""Tree rollouts (round 0 with `spi.tree`): the branching index (hand-checked), the tree's shape (siblings share
their prefix exactly), rows that end early kept once, the token cost of shared prefixes, and that
`SuccessivePolicyIteration.rollouts` uses the tree when the config names one."""

from __future__ import annotations

import pytest
import torch

from conftest import make_policy, never_ends
from spi_align.config import Config
from spi_align.core.errors import SpiError
from spi_align.core.records import Cost, Prompt
from spi_align.runs.rundir import RunDir
from spi_align.search import PlainSampling, TreeSampling
from spi_align.search.tree import branch_index
from spi_align.spi import SuccessivePolicyIteration

PROMPTS = [Prompt("a", "Name three colours."), Prompt("b", "Write a poem about the sea."), Prompt("c", "Hi")]


def leaf_tokens(results) -> list[list[list[int]]]:
    """Per prompt, the token ids of each leaf, in row order."""
    return [[c.token_ids for c in r.candidates] for r in results]


def prefix_cost(leaves: list[list[int]], chunk: int, depth: int) -> int:
    """Tokens a tree of `depth` branchings samples for these leaves: every distinct node (prefix cut at a chunk
    boundary j·L, j < depth) counted once, for the tokens it adds to its parent."""
    total = 0
    for j in range(depth):
        nodes = {tuple(t[: (j + 1) * chunk]) for t in leaves if len(t) > j * chunk}
        total += sum(len(n) - j * chunk for n in nodes)
    return total + sum(max(len(t) - depth * chunk, 0) for t in leaves)


def test_branch_index_repeats_live_rows_and_keeps_ended_ones_once():
    assert branch_index(torch.tensor([False, True, False]), 2).tolist() == [0, 0, 1, 2, 2]
    assert branch_index(torch.tensor([False, False]), 3).tolist() == [0, 0, 0, 1, 1, 1]
    assert branch_index(torch.tensor([True, True]), 4).tolist() == [0, 1]
    assert branch_index(torch.tensor([True, False, True]), 1).tolist() == [0, 1, 2]
    assert branch_index(torch.zeros(0, dtype=torch.bool), 2).tolist() == []


def test_empty_or_bad_branching_is_one_clear_error(tiny_policy):
    for branches, chunk in [([], 4), ([2, 0], 4), ([2], 0)]:
        with pytest.raises(SpiError, match="tree rollouts need") as err:
            TreeSampling(tiny_policy, branches, chunk)
        assert "\n" not in str(err.value)
    assert TreeSampling(tiny_policy, [4, 2], 16).name == "tree-4x2"
    assert TreeSampling(tiny_policy, [4, 2], 16).leaves == 8


def test_siblings_share_their_first_chunk_and_cost_counts_shared_prefixes_once(tiny_causal_lm, smol_tokenizer):
    policy = never_ends(make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=8))
    cost = Cost()
    results = TreeSampling(policy, [2, 3], chunk=2).run(PROMPTS, cost)
    for leaves in leaf_tokens(results):
        assert len(leaves) == 6 and all(len(t) == 8 for t in leaves)
        first = [tuple(t[:2]) for t in leaves]
        assert first[0] == first[1] == first[2] and first[3] == first[4] == first[5]  # siblings, in row order
        assert len(set(first)) <= 2
        assert len({tuple(t) for t in leaves}) == 6  # siblings continue differently
    # per prompt: 2 first chunks of 2 tokens, then 6 leaves of 6 more; 8 independent samples would take 6 · 8
    assert cost.tokens_generated == len(PROMPTS) * (2 * 2 + 6 * 6) == 120
    assert cost.tokens_generated == sum(prefix_cost(leaves, 2, 2) for leaves in leaf_tokens(results))
    assert cost.policy_forwards == 1 + 8  # one prefill, then one decode step per token for all rows together
    plain = Cost()
    PlainSampling(policy, 6).run(PROMPTS, plain)
    assert plain.tokens_generated == len(PROMPTS) * 6 * 8 > cost.tokens_generated


def test_three_levels_share_two_then_four_tokens(tiny_causal_lm, smol_tokenizer):
    policy = never_ends(make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=8))
    cost = Cost()
    results = TreeSampling(policy, [2, 2, 2], chunk=2).run(PROMPTS[:2], cost)
    for leaves in leaf_tokens(results):
        assert len(leaves) == 8
        for group in (leaves[:4], leaves[4:]):  # the leaves under one first chunk
            assert len({tuple(t[:2]) for t in group}) == 1
            assert len({tuple(t[:4]) for t in group}) == 2
        for pair in range(0, 8, 2):  # the leaves under one second-level node
            assert leaves[pair][:4] == leaves[pair + 1][:4] and leaves[pair] != leaves[pair + 1]
    assert cost.tokens_generated == 2 * (2 * 2 + 4 * 2 + 8 * 4)
    assert cost.tokens_generated == sum(prefix_cost(leaves, 2, 3) for leaves in leaf_tokens(results))


def test_a_row_that_ends_in_the_first_chunk_is_one_leaf(tiny_causal_lm, smol_tokenizer):
    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=8)
    # the tiny random model samples near-uniformly: a third of the vocabulary as end tokens ends about half of
    # the first chunks (2 tokens) early
    policy.eos_ids = torch.arange(len(smol_tokenizer) // 3)
    cost = Cost()
    results = TreeSampling(policy, [3, 2], chunk=2).run(PROMPTS, cost)
    short = live = 0
    for r in results:
        leaves = [c.token_ids for c in r.candidates]
        ended = [c for c in r.candidates if c.finished and c.num_tokens <= 2]  # ended inside the first chunk
        nodes = {tuple(t[:2]) for t in leaves if len(t) > 2}  # first chunks that went on: branched 2 ways
        assert all(sum(t == c.token_ids for t in leaves) == 1 for c in ended)  # kept once, not duplicated
        for node in nodes:
            assert sum(tuple(t[:2]) == node for t in leaves) == 2
        assert len(ended) + len(nodes) == 3 and len(leaves) == len(ended) + 2 * len(nodes)
        assert all(c.finished or c.num_tokens == 8 for c in r.candidates)
        short, live = short + len(ended), live + len(nodes)
    assert short > 0 and live > 0  # both cases happened with this seed
    assert cost.tokens_generated == sum(prefix_cost(leaves, 2, 2) for leaves in leaf_tokens(results))


def test_spi_tree_makes_round_0_a_sampling_tree(tiny_causal_lm, smol_tokenizer, tmp_path):
    policy = never_ends(make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=6))
    cfg = Config.model_validate({"spi": {"tree": [2, 2], "chunk": 2}})
    records = SuccessivePolicyIteration(policy, None, cfg, RunDir(tmp_path, "tree")).rollouts(0, PROMPTS[:2])
    assert [r["id"] for r in records] == ["a", "b"]
    for record in records:
        leaves = [c["token_ids"] for c in record["candidates"]]
        assert len(leaves) == 4 and all(len(t) == 6 for t in leaves)
        assert leaves[0][:2] == leaves[1][:2] and leaves[2][:2] == leaves[3][:2]
        assert len({tuple(t[:4]) for t in leaves}) == 4
    assert (tmp_path / "tree" / "rollouts-0.jsonl").is_file()

    plain_cfg = Config.model_validate({"spi": {"chunk": 2, "rollouts": 3}})  # rollouts alone: plain samples
    records = SuccessivePolicyIteration(policy, None, plain_cfg, RunDir(tmp_path, "plain")).rollouts(0, PROMPTS[:2])
    assert [len(r["candidates"]) for r in records] == [3, 3]
    assert (cfg.spi.round0_rollouts, plain_cfg.spi.round0_rollouts, Config().spi.round0_rollouts) == (4, 3, 8)
