"""`spi run` as a new user runs it, through the real CLI on a tiny model: a run that fails before its first step
leaves no folder behind (so the corrected command is not refused), and the reward on partial responses steers SPI."""

from __future__ import annotations

import json
from pathlib import Path

from spi_align.cli import main

ROOT = Path(__file__).resolve().parents[1]
SCORER = str(ROOT / "tests" / "mocks" / "scorers.py") + ":vowel_share"


def tiny(tmp_path: Path, model: Path, *extra: str) -> list[str]:
    """Overrides that shrink a run to seconds on the tiny model."""
    return [
        f"policy.model={model}", f"run_dir={tmp_path}", f"evaluator={SCORER}", "reward=train",
        "generation.max_new_tokens=8", "data.batch_size=2", "spi.chunk=4", "spi.width=2", "spi.successors=2",
        "spi.rollouts=4", "spi.rounds=1", *extra,
    ]  # fmt: skip


def write_prompts(path: Path, count: int = 4) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Question {i}: name a colour."}) + "\n" for i in range(count)))
    return path


def test_a_run_that_fails_before_its_first_step_leaves_nothing_and_the_fixed_command_runs(
    capsys, tmp_path, tiny_model_dir
):
    demo = str(ROOT / "configs" / "demo.yaml")  # name: demo
    missing = tmp_path / "missing.jsonl"
    assert main(["run", demo, f"data.prompts={missing}", *tiny(tmp_path, tiny_model_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not found" in err, err
    assert not (tmp_path / "demo").exists()  # no run folder, no config.yaml left behind

    prompts = write_prompts(tmp_path / "prompts.jsonl")
    assert main(["run", demo, f"data.prompts={prompts}", *tiny(tmp_path, tiny_model_dir)]) == 0
    results = json.loads((tmp_path / "demo" / "results.json").read_text())["results"]
    assert set(results) == {"sample", "bon-4", "spi-1"}


def test_a_folder_holding_only_a_config_is_taken_over_one_with_a_finished_step_is_not(capsys, tmp_path, tiny_model_dir):
    prompts = write_prompts(tmp_path / "prompts.jsonl", count=2)
    base = ["generate", f"data.prompts={prompts}", f"policy.model={tiny_model_dir}", f"run_dir={tmp_path}", "name=g"]
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "config.yaml").write_text("name: g\nseed: 99\n")  # an older run that never finished a step
    assert main([*base, "search.method=sample", "generation.max_new_tokens=4"]) == 0
    assert "seed: 99" not in (tmp_path / "g" / "config.yaml").read_text()
    assert main([*base, "search.method=sample", "generation.max_new_tokens=5"]) == 2  # now it holds outputs
    assert "another config" in capsys.readouterr().err


def test_the_reward_on_partial_responses_guides_spi_end_to_end(tmp_path, tiny_model_dir):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    common = ["run", str(ROOT / "configs" / "demo.yaml"), f"data.prompts={prompts}", f"reward={SCORER}"]
    common += ["spi.value=heads", *tiny(tmp_path, tiny_model_dir)]
    assert main([*common, "name=plain"]) == 0
    assert main([*common, "name=guided", "spi.reward_guide=50"]) == 0

    def read(name: str, file: str) -> list[dict]:
        return [json.loads(line) for line in (tmp_path / name / file).read_text().splitlines()]

    # everything before the guided search is the same: round 0, V_0, plain sampling and best-of-N
    for file in ("rollouts-0.jsonl", "eval-sample.jsonl", "eval-bon-4.jsonl"):
        assert read("plain", file) == read("guided", file), file
    plain, guided = read("plain", "eval-spi-1.jsonl"), read("guided", "eval-spi-1.jsonl")
    assert [r["response"] for r in plain] != [r["response"] for r in guided]  # the guidance chose other parents
