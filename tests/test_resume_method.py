"""A method interrupted part-way resumes to exactly the file an uninterrupted run writes (`resumable.run_method`)."""

from __future__ import annotations

import json

import pytest

from conftest import make_policy
from mocks.scorers import CountScorer
from spi_align.core.errors import SpiError
from spi_align.core.records import Prompt
from spi_align.runs.resumable import run_method
from spi_align.runs.rundir import RunDir
from spi_align.search import BestOfN

PROMPTS = [Prompt(str(i), f"Question {i}: name a colour.") for i in range(5)]
BATCH = 2  # 5 prompts: batches of 2, 2 and 1


class Interrupted(Exception):
    pass


class StopAfter:
    """A search that runs `batches` batches of the real one, then is interrupted (as by Ctrl-C or a lost machine)."""

    def __init__(self, search, batches: int) -> None:
        self.search, self.batches, self.name = search, batches, search.name

    def run(self, prompts, cost):
        if self.batches == 0:
            raise Interrupted
        self.batches -= 1
        return self.search.run(prompts, cost)


def test_a_method_interrupted_after_one_batch_resumes_to_the_uninterrupted_file(tmp_path, tiny_policy):
    policy = make_policy(tiny_policy.model, tiny_policy.tokenizer, max_new_tokens=6)
    search = BestOfN(policy, CountScorer(), n=3)

    whole = RunDir(tmp_path, "whole")
    records, cost = run_method(whole, "bon", search, PROMPTS, BATCH, policy.reseed, seed=1)

    cut = RunDir(tmp_path, "cut")
    with pytest.raises(Interrupted):
        run_method(cut, "bon", StopAfter(search, batches=1), PROMPTS, BATCH, policy.reseed, seed=1)
    saved = [json.loads(line) for line in cut.file("bon.jsonl").read_text().splitlines()]
    assert [r["id"] for r in saved] == ["0", "1"]  # exactly the first batch, whole records
    assert saved == records[:2]
    one_batch = json.loads(cut.file("bon.cost.json").read_text())["cost"]
    assert one_batch["tokens_generated"] == sum(c["num_tokens"] for r in saved for c in r["candidates"])

    policy.reseed(12345)  # whatever the policy's state, each batch starts from its own seed
    resumed, resumed_cost = run_method(cut, "bon", search, PROMPTS, BATCH, policy.reseed, seed=1)
    assert cut.file("bon.jsonl").read_text() == whole.file("bon.jsonl").read_text()
    assert resumed == records
    for field in ("tokens_generated", "policy_forwards", "reward_calls"):
        assert getattr(resumed_cost, field) == getattr(cost, field), field
    assert cost.tokens_generated == sum(c["num_tokens"] for r in records for c in r["candidates"])


def test_a_bad_line_in_a_run_file_is_one_error_naming_file_and_line(tmp_path, tiny_policy):
    run = RunDir(tmp_path, "r")
    run.write_text("bon.jsonl", '{"id": "0", "response": "x"}\n{"id": "1", "resp\n')
    with pytest.raises(SpiError, match=r"bon\.jsonl:2: not a JSON record") as err:
        run_method(run, "bon", BestOfN(tiny_policy, CountScorer(), n=2), PROMPTS, BATCH)
    assert "\n" not in str(err.value)
