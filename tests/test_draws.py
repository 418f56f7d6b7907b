"""`spi.draws`: π_k rolled out as independent one-beam draws (`search/draws.py`): the pooled shape of each prompt's
candidates (hand-counted), the token cost, the best pick, and that round k ≥ 1's rollouts use it when the config
says so (and the evaluated search otherwise)."""

from __future__ import annotations

import pytest

from conftest import make_policy, never_ends
from mocks.scorers import CountScorer
from spi_align.config import Config
from spi_align.core.errors import SpiError
from spi_align.core.records import Cost, Prompt
from spi_align.runs.rundir import RunDir
from spi_align.search import RepeatedDraws, beam
from spi_align.search.beam import ChunkBeamSearch
from spi_align.spi import SuccessivePolicyIteration
from spi_align.values import ValueHead

PROMPTS = [Prompt("a", "Name three colours."), Prompt("b", "Write a poem about the sea.")]


def spines(tokens: list[list[int]], length: int) -> dict[tuple[int, ...], int]:
    """How many candidates share each first `length` tokens."""
    found: dict[tuple[int, ...], int] = {}
    for t in tokens:
        found[tuple(t[:length])] = found.get(tuple(t[:length]), 0) + 1
    return found


def test_draws_pool_independent_one_beam_searches_per_prompt(tiny_causal_lm, smol_tokenizer):
    policy = never_ends(make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=8))
    one = ChunkBeamSearch(policy, None, CountScorer(), width=1, successors=3, chunk=2, selection="softmax", trace=False)
    cost = Cost()
    results = RepeatedDraws(one, draws=4).run(PROMPTS, cost)
    assert [r.prompt.id for r in results] == ["a", "b"]
    for r in results:
        tokens = [c.token_ids for c in r.candidates]
        # each draw: 3 final siblings on one 6-token spine; 4 draws, 4 spines, apart from their first chunk on
        assert len(tokens) == 12 and all(len(t) == 8 for t in tokens)
        assert sorted(spines(tokens, 6).values()) == [3, 3, 3, 3]
        assert len(spines(tokens, 2)) == 4
        assert r.chosen.score == max(c.score for c in r.candidates)
    # per draw, 4 chunks of 2 tokens for each of 3 successors; 2 prompts x 4 draws
    assert cost.tokens_generated == 2 * 4 * 4 * 3 * 2
    assert RepeatedDraws(one, 4).name == "beam-w1k3l2-draws4"
    with pytest.raises(SpiError, match="at least 1"):
        RepeatedDraws(one, 0)


def test_round_k_rollouts_are_draws_of_pi_k_when_the_config_asks(tiny_causal_lm, smol_tokenizer, tmp_path, monkeypatch):
    policy = never_ends(make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=6))
    head = ValueHead(tiny_causal_lm.config.hidden_size)
    spi = {"value": "heads", "chunk": 2, "width": 2, "successors": 2}

    drawn_cfg = Config.model_validate({"spi": {**spi, "draws": 3, "draw_temperature": 0.5}})
    run = SuccessivePolicyIteration(policy, CountScorer(), drawn_cfg, RunDir(tmp_path, "drawn"))
    run.values = [head]
    sampler = run.improved().sampler(1, 3, 0.5)
    assert isinstance(sampler, RepeatedDraws) and sampler.draws == 3
    inner = sampler.search
    assert isinstance(inner, ChunkBeamSearch)
    shape = (inner.width, inner.successors, inner.selection, inner.temperature, inner.trace)
    assert shape == (1, 2, "softmax", 0.5, False)
    with pytest.raises(SpiError, match="V_0 .. V_1"):
        run.improved().sampler(2, 3, 0.5)
    choices: list[tuple[int, int, float]] = []  # (candidates, width, temperature) of every softmax choice

    def recorded(values, width, temperature, generator):
        choices.append((len(values), width, temperature))
        return real(values, width, temperature, generator)

    real = beam.softmax_sample
    monkeypatch.setattr(beam, "softmax_sample", recorded)
    records = run.rollouts(1, PROMPTS)
    # 2 prompts x 3 draws, each choosing 1 of K = 2 at 2 and 4 tokens, at the configured temperature
    assert choices == [(2, 1, 0.5)] * (2 * 3 * 2)
    for record in records:
        tokens = [c["token_ids"] for c in record["candidates"]]
        assert len(tokens) == 3 * 2 and sorted(spines(tokens, 4).values()) == [2, 2, 2]
    assert (tmp_path / "drawn" / "rollouts-1.jsonl").is_file()

    beam_cfg = Config.model_validate({"spi": spi})  # no draws: the evaluated search, W·K finished candidates
    run = SuccessivePolicyIteration(policy, CountScorer(), beam_cfg, RunDir(tmp_path, "beam"))
    run.values = [head]
    assert [len(r["candidates"]) for r in run.rollouts(1, PROMPTS)] == [4, 4]
    assert (beam_cfg.spi.draws, beam_cfg.spi.draw_temperature) == (None, 1.0)
