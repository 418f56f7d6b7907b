"""The `spi` command line on tiny models: bad input is one line and exit 2; runs write their artefacts and resume."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from spi_align.cli import main
from spi_align.search.beam import ChunkBeamSearch
from spi_align.values import prefix_states as prefix_states_module

SCORER = str(Path(__file__).parent / "mocks" / "scorers.py") + ":vowel_share"


def one_line_error(capsys, argv: list[str], expected: str) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("spi: error: ") and expected in err, err


def test_missing_prompt_file(capsys, tmp_path, tiny_model_dir):
    one_line_error(
        capsys,
        ["generate", f"data.prompts={tmp_path / 'nope.jsonl'}", f"policy.model={tiny_model_dir}"],
        "not found",
    )


def test_empty_prompt_file(capsys, tmp_path, tiny_model_dir):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    one_line_error(capsys, ["generate", f"data.prompts={empty}", f"policy.model={tiny_model_dir}"], "empty")


def test_unknown_config_key(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("search: {n: 4, beams: 2}\n")
    one_line_error(capsys, ["generate", "-c", str(cfg)], "unknown key 'search.beams'")


@pytest.mark.parametrize("n", ["0", "-3"])
def test_n_not_positive(capsys, n):
    one_line_error(capsys, ["generate", f"search.n={n}"], "search.n")


def test_max_tokens_not_positive(capsys):
    one_line_error(capsys, ["demo", "generation.max_new_tokens=0"], "generation.max_new_tokens")


def test_model_path_that_does_not_exist(capsys, prompt_file):
    one_line_error(
        capsys, ["generate", f"data.prompts={prompt_file}", "policy.model=./no/such/model"], "does not exist"
    )


def test_prompt_longer_than_context(capsys, tmp_path, tiny_model_dir):
    long = tmp_path / "long.jsonl"
    long.write_text(json.dumps({"prompt": "word " * 600}) + "\n")
    one_line_error(
        capsys,
        [
            "generate",
            f"data.prompts={long}",
            f"policy.model={tiny_model_dir}",
            "search.method=sample",
            f"run_dir={tmp_path}",
        ],
        "exceeds the model's context",
    )


def test_generate_best_of_n_writes_a_run(capsys, tmp_path, tiny_model_dir, prompt_file):
    argv = [
        "generate", f"data.prompts={prompt_file}", f"policy.model={tiny_model_dir}", f"run_dir={tmp_path}",
        "name=g", "search.n=3", "generation.max_new_tokens=5", f"reward={SCORER}",
    ]  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(line) for line in (tmp_path / "g" / "outputs.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all(len(r["candidates"]) == 3 for r in records)
    assert all(r["score"] == max(c["score"] for c in r["candidates"]) for r in records)
    metrics = json.loads((tmp_path / "g" / "metrics.json").read_text())
    spent = sum(c["num_tokens"] for r in records for c in r["candidates"])
    assert metrics["cost"]["tokens_generated"] == spent <= 4 * 3 * 5
    # the same name with another config is refused rather than mixed in
    one_line_error(capsys, [*argv[:-2], "search.n=4", f"reward={SCORER}"], "another config")


def spi_args(tmp_path: Path, name: str, model: Path, prompts: Path) -> list[str]:
    return [
        "demo", f"data.prompts={prompts}", f"policy.model={model}", f"run_dir={tmp_path}", f"name={name}",
        f"evaluator={SCORER}", "reward=train", "generation.max_new_tokens=8", "data.batch_size=2",
        "spi.chunk=3", "spi.width=2", "spi.successors=2", "spi.rollouts=4", "spi.rounds=2",
    ]  # fmt: skip


def test_spi_run_resumes_to_the_same_result(tmp_path, tiny_model_dir, prompt_file, monkeypatch):
    assert main(spi_args(tmp_path, "whole", tiny_model_dir, prompt_file)) == 0
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert set(whole["results"]) == {"sample", "bon-4", "spi-1", "spi-2"}
    assert (tmp_path / "whole" / "report.md").is_file() and (tmp_path / "whole" / "evaluator_by_round.png").is_file()

    calls = {"n": 0}
    original = ChunkBeamSearch.run

    def interrupted(self, prompts, cost):
        calls["n"] += 1
        if calls["n"] == 3:  # eval-spi-1's first batch, after round 1's two rollout batches (between batches;
            # tests/test_resume_method.py interrupts a method after one batch of its file is written)
            raise KeyboardInterrupt
        return original(self, prompts, cost)

    monkeypatch.setattr(ChunkBeamSearch, "run", interrupted)
    assert main(spi_args(tmp_path, "cut", tiny_model_dir, prompt_file)) == 130
    assert not (tmp_path / "cut" / "results.json").exists()
    assert (tmp_path / "cut" / "values" / "round-0" / "value_head.json").exists()
    assert (tmp_path / "cut" / "rollouts-1.jsonl").exists() and not (tmp_path / "cut" / "eval-spi-1.jsonl").exists()
    monkeypatch.setattr(ChunkBeamSearch, "run", original)
    # a folder carried without round 0's prefix states (results/snapshot.py packs none) resumes without computing
    # them again: the reward head and V_0 that read them are saved
    shutil.rmtree(tmp_path / "cut" / "rollouts-0.states")
    # a round fitted before its metrics had the proxy's agreement gets it on resume, as a fresh fit writes it
    round1 = tmp_path / "cut" / "values" / "round-1.json"
    older = {k: v for k, v in json.loads(round1.read_text()).items() if not k.startswith("heldout_reward_judge_")}
    round1.write_text(json.dumps(older))

    def recomputed(*args, **kwargs):
        raise AssertionError("prefix states computed again for a saved reward head and V_0")

    monkeypatch.setattr(prefix_states_module, "prefix_states", recomputed)
    assert main(spi_args(tmp_path, "cut", tiny_model_dir, prompt_file)) == 0
    resumed = json.loads((tmp_path / "cut" / "results.json").read_text())
    fresh = json.loads((tmp_path / "whole" / "values" / "round-1.json").read_text())
    assert 0.0 <= fresh["heldout_reward_judge_accuracy"] <= 1.0
    assert json.loads(round1.read_text()) == fresh
    for method, res in whole["results"].items():
        assert resumed["results"][method]["evaluator"] == res["evaluator"], method
        assert resumed["results"][method]["reward"] == res["reward"], method
        assert resumed["results"][method]["cost"]["tokens_generated"] == res["cost"]["tokens_generated"]
    for k in range(2):
        a = (tmp_path / "whole" / f"rollouts-{k}.jsonl").read_text()
        assert a == (tmp_path / "cut" / f"rollouts-{k}.jsonl").read_text()
