"""A scorer that returns NaN or ±inf is one clear error naming it, on every path that scores: picking by text or
from rows (best-of-N, the beam), evaluating, a user's function, and the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mocks.scorers import CountScorer, FixedScorer
from spi_align.cli import main
from spi_align.config import Config
from spi_align.core.errors import SpiError
from spi_align.core.records import Cost, Prompt
from spi_align.experiment.pipeline import evaluate
from spi_align.runs.rundir import RunDir
from spi_align.scoring import make_scorer
from spi_align.search import BestOfN
from spi_align.search.beam import ChunkBeamSearch
from spi_align.spi import SuccessivePolicyIteration
from spi_align.values.reward_guide import TextPartialReward

PROMPTS = [Prompt("a", "Name three colours."), Prompt("b", "Hi")]
NAN_SCORER = str(Path(__file__).parent / "mocks" / "scorers.py") + ":nan_for_vowels"


def one_line(err: pytest.ExceptionInfo[SpiError]) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_best_of_n_refuses_a_non_finite_score(tiny_policy, bad):
    with pytest.raises(SpiError, match=r"scorer 'broken' returned (nan|inf|-inf) for response 1") as err:
        BestOfN(tiny_policy, FixedScorer([0.5, bad, 0.2], name="broken"), n=3).run(PROMPTS, Cost())
    assert "finite" in one_line(err)


def test_the_beam_refuses_a_non_finite_score(tiny_policy):
    search = ChunkBeamSearch(tiny_policy, None, FixedScorer([math.nan], name="nan-reward"), 2, 2, 8)
    with pytest.raises(SpiError, match="scorer 'nan-reward' returned nan for response 0"):
        search.run(PROMPTS, Cost())


class RowsNaN(CountScorer):
    """A reward that scores finished rows straight from the policy's state, and returns NaN there."""

    name = "row-reward"

    def score_rows(self, rows, index, cost):
        return [math.nan] * len(index)


def test_scores_read_from_rows_are_checked_too(tiny_policy):
    with pytest.raises(SpiError, match="scorer 'row-reward' returned nan"):
        BestOfN(tiny_policy, RowsNaN(), n=2).run(PROMPTS, Cost())
    assert BestOfN(tiny_policy, CountScorer(), n=2).run(PROMPTS, Cost())  # the same search with a finite reward


def test_evaluation_refuses_a_non_finite_score():
    records = [{"id": "a", "response": "red"}, {"id": "b", "response": "hello"}]
    assert evaluate(records, PROMPTS, FixedScorer([1.0, 2.0])) == [1.0, 2.0]
    with pytest.raises(SpiError, match=r"scorer 'judge' returned -inf for response 1 'hello'"):
        evaluate(records, PROMPTS, FixedScorer([1.0, -math.inf], name="judge"))


def test_a_users_function_returning_nan_is_named_by_its_spec():
    scorer = make_scorer(NAN_SCORER)
    assert scorer.score(PROMPTS, ["xyz", "rhythm"]) == [0.0, 0.0]
    with pytest.raises(SpiError, match=r"scorer '.*nan_for_vowels' returned nan for response 1 'blue'") as err:
        scorer.score(PROMPTS, ["xyz", "blue"])
    one_line(err)


def test_spi_generate_with_a_nan_scorer_exits_with_one_line(capsys, tmp_path, tiny_model_dir):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}"}) + "\n" for i in range(2)))
    argv = [
        "generate", f"data.prompts={prompts}", f"policy.model={tiny_model_dir}", f"run_dir={tmp_path}",
        "search.n=3", "generation.max_new_tokens=6", f"reward={NAN_SCORER}",
    ]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nan_for_vowels' returned nan" in err, err


def test_rollouts_scored_to_train_values_are_checked(tiny_policy, tmp_path):
    """Round 0's plain samples are scored by the reward before V_0 regresses on them: a NaN there is named too."""
    records = [
        {"id": "a", "candidates": [{"token_ids": [5, 6], "score": None}, {"token_ids": [7], "score": None}]},
        {"id": "b", "candidates": [{"token_ids": [8, 9, 10], "score": None}]},
    ]
    fit = SuccessivePolicyIteration(tiny_policy, FixedScorer([0.1, 0.2, 0.3]), Config(), RunDir(tmp_path, "r"))
    assert fit.scored(records, PROMPTS).rewards == [0.1, 0.2, 0.3]
    fit.reward = FixedScorer([0.1, math.inf, 0.3], name="rollout-reward")
    with pytest.raises(SpiError, match="scorer 'rollout-reward' returned inf for response 1"):
        fit.scored(records, PROMPTS)


def test_the_reward_on_partial_text_is_checked_in_the_search(tiny_policy):
    rows = tiny_policy.start(PROMPTS, Cost())
    tiny_policy.extend(rows, 3, Cost())
    assert TextPartialReward(FixedScorer([0.5]), tiny_policy)(rows).tolist() == [0.5, 0.5]
    with pytest.raises(SpiError, match="scorer 'partial' returned nan for response 0"):
        TextPartialReward(FixedScorer([math.nan], name="partial"), tiny_policy)(rows)
