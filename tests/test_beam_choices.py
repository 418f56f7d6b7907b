"""Which parents the chunk beam search keeps at each step (Algorithm 2), worked by hand.

The policy is the real tiny one (its KV cache, rows and end tokens), with its token sampler replaced by a script so
that the keys the selection sees are known; the value function is a table of hand-made values. Covered: diversity-
first keyed by response (the paper's) or by parent, top-W and value-softmax selection with duplicate keys inside the
beam and a row that already ended (which the guide never scores), softmax drawn by a generator on the device of its
probabilities, the eq. 14 log π_base term, and finished candidates kept in the final pool.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import torch

from conftest import make_policy
from mocks.scorers import LengthScorer
from spi_align.config import SPIConfig
from spi_align.core.records import Cost, Prompt
from spi_align.search.beam import ChunkBeamSearch
from spi_align.search.selection import diversity_first, top_w

PROMPTS = [Prompt("p", "Name three colours."), Prompt("q", "Write a poem about the sea.")]
A, B, C, D, X, Y, Z = 1000, 1001, 1002, 1003, 1004, 1005, 1006
EOS = 2


class ScriptedSampler:
    """Stands in for the policy's token sampler: call i returns `script[i]` (a list of ids, or a function of the
    logits), one token per row."""

    def __init__(self, script: Sequence[list[int] | Callable[[torch.Tensor], torch.Tensor]]) -> None:
        self.script = list(script)
        self.calls = 0

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        step = self.script[self.calls]
        self.calls += 1
        tokens = step(logits) if callable(step) else torch.tensor(step)
        assert tokens.shape == (logits.shape[0],)
        return tokens.to(logits.device)


class ParentLog:
    """Per-row state in `Rows.extras` that records every selection of rows (the parents the beam keeps)."""

    def __init__(self) -> None:
        self.selections: list[list[int]] = []

    def select(self, index: torch.Tensor) -> ParentLog:
        self.selections.append(index.tolist())
        return self


class HandValues:
    """Value function: the i-th call returns `steps[i]` (one value per row) and starts logging selections."""

    def __init__(self, steps: Sequence[Sequence[float]]) -> None:
        self.steps = [list(s) for s in steps]
        self.log = ParentLog()
        self.tokens: list[list[list[int]]] = []

    def __call__(self, rows) -> torch.Tensor:
        rows.extras.setdefault("parents", self.log)
        self.tokens.append(rows.token_lists())
        values = self.steps[len(self.tokens) - 1]
        assert len(values) == rows.size, f"the guide scored {rows.size} rows, the table has {len(values)} values"
        return torch.tensor(values, dtype=torch.float32)


# Two prompts, W = 2, K = 2, L = 1 token, 3 tokens in all. Rows 0-3 continue prompt p, rows 4-7 prompt q.
# Selections are logged as indices into the rows the guide scored.
STEP1 = [A, A, B, B, C, EOS, D, D]  # row 5 ends at once: it leaves the beam (and stays in the pool) unscored
VALUES1 = [5, 4, 1, 3, 9, 2, 7]  # the 7 rows left: p's A A B B (0-3), q's C D D (4-6)
STEP2 = [X, X, Y, Z, X, Y, X, X]  # the two children of a parent can be identical (duplicate keys in the beam)
VALUES2 = [6, 5, 1, 2, 3, 1, 8, 7]
STEP3 = [X, Y, Z, X, Y, Z, X, Y]


def run_scenario(
    tiny_causal_lm, smol_tokenizer, selection: str, temperature: float = 1.0, seed: int = 0, generator: Any = None
):
    """The search on the scripted tokens and hand values; `generator`: replaces the policy's token generator."""
    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=3, seed=seed)
    if generator is not None:
        policy.generator = generator
    policy.sampler = ScriptedSampler([STEP1, STEP2, STEP3])
    value = HandValues([VALUES1, VALUES2])
    search = ChunkBeamSearch(
        policy, value, LengthScorer(sign=-1), width=2, successors=2, chunk=1, selection=selection,
        temperature=temperature,
    )  # fmt: skip
    results = search.run(PROMPTS, Cost())
    assert policy.sampler.calls == 3 and len(value.tokens) == 2  # no value call once every row has ended
    return results, value


def test_diversity_first_keeps_one_of_each_key_before_a_duplicate(tiny_causal_lm, smol_tokenizer):
    results, value = run_scenario(tiny_causal_lm, smol_tokenizer, "diversity")
    # step 1, p: keys A A B B, values 5 4 1 3 -> best A (row 0), then best B (row 3), not the second A (4 > 3);
    #         q: C D D (the ended row left) with 9 2 7 -> C (row 4), then the better D (row 6)
    # step 2, p: AX AX BY BZ, values 6 5 1 2 -> AX (row 0), then BZ (row 3, 2 > 1), not the duplicate AX (5);
    #         q: CX CY DX DX, values 3 1 8 7 -> DX (row 6), then CX (row 4), not the duplicate DX (7)
    assert value.log.selections == [[0, 0, 3, 3, 4, 4, 6, 6], [0, 0, 3, 3, 6, 6, 4, 4]]
    assert [c.token_ids[:2] for c in results[0].candidates] == [[A, X], [A, X], [B, Z], [B, Z]]
    assert [c.token_ids[:2] for c in results[1].candidates] == [[EOS], [D, X], [D, X], [C, X], [C, X]]


def test_diversity_by_parent_keeps_one_child_of_every_parent_before_a_second(tiny_causal_lm, smol_tokenizer):
    assert SPIConfig(selection="diversity-parent").selection == "diversity-parent"  # a setting, beside the paper's
    results, value = run_scenario(tiny_causal_lm, smol_tokenizer, "diversity-parent")
    # step 1: every row continues the prompt (one parent), so this is top-W:
    #         p: values 5 4 1 3 -> rows 0, 1 (both A: the response key would take row 3, B, second);
    #         q: C D D with 9 2 7 -> rows 4 (C), 6 (D)
    # step 2, p: rows 0, 1 continue parent row 0 and rows 2, 3 parent row 1; values 6 5 1 2 -> row 0 (parent 0's
    #         best), then row 3 (parent 1's best, 2 > 1), not row 1 (5: parent 0's second, which top-W takes)
    #         q: rows 4, 5 continue C and rows 6, 7 continue D; values 3 1 8 7 -> row 6, then row 4, not row 7 (7)
    assert value.log.selections == [[0, 0, 1, 1, 4, 4, 6, 6], [0, 0, 3, 3, 6, 6, 4, 4]]
    assert [c.token_ids[:2] for c in results[0].candidates] == [[A, X], [A, X], [A, Z], [A, Z]]
    assert [c.token_ids[:2] for c in results[1].candidates] == [[EOS], [D, X], [D, X], [C, X], [C, X]]


def test_top_w_keeps_the_highest_values_duplicates_and_all(tiny_causal_lm, smol_tokenizer):
    results, value = run_scenario(tiny_causal_lm, smol_tokenizer, "top")
    assert value.log.selections == [[0, 0, 1, 1, 4, 4, 6, 6], [0, 0, 1, 1, 6, 6, 7, 7]]
    # step 2 rows of p are children of rows 0 and 1 (both A): A X, A X, A Y, A Z; the top two are both A X
    assert [c.token_ids[:2] for c in results[0].candidates] == [[A, X], [A, X], [A, X], [A, X]]


def test_softmax_at_low_temperature_draws_by_value(tiny_causal_lm, smol_tokenizer):
    # at temperature 0.01 a gap of 1 in value is a factor e^100: the draws come out in value order
    _, value = run_scenario(tiny_causal_lm, smol_tokenizer, "softmax", temperature=0.01)
    assert value.log.selections == [[0, 0, 1, 1, 4, 4, 6, 6], [0, 0, 1, 1, 6, 6, 7, 7]]


def test_the_guide_scores_only_rows_still_in_the_beam(tiny_causal_lm, smol_tokenizer):
    _, value = run_scenario(tiny_causal_lm, smol_tokenizer, "diversity")
    assert [len(seen) for seen in value.tokens] == [7, 8]  # step 1: row 5 ended (EOS), so 7 of the 8 candidates
    assert [EOS] not in value.tokens[0] and value.tokens[0][4:] == [[C], [D], [D]]


def test_softmax_draws_on_the_device_of_its_probabilities(tiny_causal_lm, smol_tokenizer, monkeypatch):
    """The values are moved to the CPU before the draw: the generator must be a CPU one even when the policy
    samples tokens on a GPU (a stand-in here: the token sampler is scripted and never draws)."""
    draws: list[tuple[torch.device, torch.device]] = []
    multinomial = torch.multinomial

    def checked(probs, *args, generator=None, **kwargs):
        draws.append((probs.device, generator.device))
        assert generator.device == probs.device, "a generator on another device cannot draw these probabilities"
        return multinomial(probs, *args, generator=generator, **kwargs)

    monkeypatch.setattr(torch, "multinomial", checked)
    run_scenario(tiny_causal_lm, smol_tokenizer, "softmax", generator=SimpleNamespace(device=torch.device("cuda")))
    assert len(draws) == 4 and all(probs == torch.device("cpu") for probs, _ in draws)  # 2 steps x 2 prompts


def test_softmax_draws_from_the_policy_seed(tiny_causal_lm, smol_tokenizer):
    def picks(seed: int) -> list[list[int]]:
        return run_scenario(tiny_causal_lm, smol_tokenizer, "softmax", temperature=1e6, seed=seed)[1].log.selections

    assert picks(3) == picks(3)  # the same seed draws the same parents
    draws = [picks(seed) for seed in range(6)]
    assert len({str(d) for d in draws}) > 1  # near-uniform at a high temperature: other seeds draw others
    for step1, _ in draws:
        assert step1[0::2] == step1[1::2]  # each parent once per successor (K = 2)
        assert len(set(step1[:4])) == 2 and set(step1[:4]) <= {0, 1, 2, 3}  # W = 2 distinct parents of p
        assert len(set(step1[4:])) == 2 and set(step1[4:]) <= {4, 5, 6}  # of q's 3 rows left (one ended)


def test_base_logprob_adds_log_pi_base_to_the_value(tiny_causal_lm, smol_tokenizer):
    """Eq. 14: rank by V + log π_base. Rows 0, 1 take the policy's least likely token, rows 2, 3 its most likely;
    the value is 0 everywhere, so only log π_base can put rows 2, 3 first."""

    def least_then_most(logits: torch.Tensor) -> torch.Tensor:
        least = logits[:, 100:].argmin(-1) + 100  # skip the special tokens (ids < 100)
        return torch.where(torch.arange(logits.shape[0]) < 2, least, logits.argmax(-1))

    def run(selection: str, base_logprob: bool) -> list[int]:
        policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=2)
        policy.sampler = ScriptedSampler([least_then_most, lambda logits: logits.argmax(-1)])
        value = HandValues([[0.0, 0.0, 0.0, 0.0]])
        search = ChunkBeamSearch(
            policy, value, LengthScorer(), width=2, successors=2, chunk=1, selection=selection,
            base_logprob=base_logprob,
        )  # fmt: skip
        search.run(PROMPTS[:1], Cost())
        return value.log.selections[0][::2]

    # keys: rows 0, 1 are one cluster (same least likely token), rows 2, 3 another
    assert run("top", base_logprob=True) == [2, 3]
    assert run("diversity", base_logprob=True) == [2, 0]
    assert run("top", base_logprob=False) == [0, 1]  # all values tie: lower index first
    assert run("diversity", base_logprob=False) == [0, 2]


def test_finished_candidates_stay_in_the_pool_and_can_win(tiny_causal_lm, smol_tokenizer):
    results, _ = run_scenario(tiny_causal_lm, smol_tokenizer, "diversity")
    p, q = results
    assert len(p.candidates) == 4 and len(q.candidates) == 5  # the rows that ended: 4 at the end, 1 + 4 for q
    early = q.candidates[0]
    assert early.finished and early.token_ids == [EOS] and early.num_tokens == 1 and early.text == ""
    assert all(not c.finished and c.num_tokens == 3 for c in [*p.candidates, *q.candidates[1:]])
    # the reward prefers the shortest text: the candidate that ended after one token wins, with the top score
    assert q.chosen is early and early.score == 0 == max(c.score for c in q.candidates)
    assert p.chosen.score == max(c.score for c in p.candidates)


def test_diversity_first_sorts_an_input_not_in_value_order():
    values = torch.tensor([5.0, 1.0, 4.0, 3.0])
    assert diversity_first(values, ["a", "a", "b", "b"], 4) == [0, 2, 3, 1]
    # where it differs from top-W: the second 'a' (4) waits until every key has placed its best
    values = torch.tensor([5.0, 4.0, 1.0, 3.0])
    assert diversity_first(values, ["a", "a", "b", "b"], 2) == [0, 3]
    assert top_w(values, 2) == [0, 1]
