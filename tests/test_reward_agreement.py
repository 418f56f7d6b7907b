"""A configured reward's agreement with the evaluator on round 0 (`ranking.agreement`, `SPIRun.measured_reward`),
and the reward head shipped for the default policy (`reward: default`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from spi_align.cli import main
from spi_align.scoring.ranking import agreement

SCORER = str(Path(__file__).parent / "mocks" / "scorers.py") + ":vowel_share"


def test_agreement_counts_pairs_ties_as_half_and_ranks_within_prompts():
    # prompt a: labels 3 > 2 > 1, reward orders them 3 > 1 > 2 -> pairs (0,1) hit, (0,2) hit, (1,2) miss
    # prompt b: labels 1 > 0, reward ties -> ½; prompt c: labels all equal -> no pair, not ranked
    predicted = [0.9, 0.1, 0.5, 0.2, 0.2, 0.3, 0.4]
    labels = [3.0, 2.0, 1.0, 1.0, 0.0, 5.0, 5.0]
    groups = ["a", "a", "a", "b", "b", "c", "c"]
    found = agreement(predicted, labels, groups)
    assert found["pairs"] == 4
    assert found["accuracy"] == pytest.approx((1 + 1 + 0 + 0.5) / 4)
    # Spearman on prompt a: ranks (3, 1, 2) vs (3, 2, 1) -> 1 - 6·(0 + 1 + 1) / (3·8) = 0.5; b and c have < 3 rows
    assert found["spearman"] == pytest.approx(0.5) and found["ranked_prompts"] == 1
    assert found["constant_prompts"] == 0
    empty = agreement([1.0, 2.0], [0.0, 0.0], ["a", "a"])
    assert empty["pairs"] == 0 and math.isnan(empty["accuracy"])


def _run(tmp_path: Path, model: Path, prompts: Path, *extra: str) -> int:
    return main([
        "demo", f"data.prompts={prompts}", f"policy.model={model}", f"run_dir={tmp_path}", "name=m",
        f"evaluator={SCORER}", "generation.max_new_tokens=6", "data.batch_size=2", "spi.chunk=3", "spi.width=2",
        "spi.successors=2", "spi.rollouts=4", "spi.tree=[]", "spi.rounds=1", *extra,
    ])  # fmt: skip


def test_a_configured_reward_is_measured_against_the_evaluator_on_round_0(tmp_path, tiny_model_dir, prompt_file):
    """reward=sentiment: reward_model.json holds its pair accuracy and Spearman with the evaluator on round 0's
    samples, equal to `agreement` recomputed from the rollouts; the report shows them."""
    from spi_align.scoring import make_scorer
    from spi_align.scoring.callable import CallableScorer

    assert _run(tmp_path, tiny_model_dir, prompt_file, "reward=sentiment", "spi.value=anchored") == 0
    run = tmp_path / "m"
    metrics = json.loads((run / "reward_model.json").read_text())
    assert metrics["reward"] == "sentiment" and "round-0" in metrics["measured_on"]
    records = [json.loads(line) for line in (run / "rollouts-0.jsonl").read_text().splitlines()]
    from spi_align.core.records import Prompt

    prompts, texts = [], []
    for r in records:
        for c in r["candidates"]:
            if c["token_ids"]:
                prompts.append(Prompt(id=r["id"], text=r["prompt"]))
                texts.append(c["text"])
    rewards = make_scorer("sentiment").score(prompts, texts)
    labels = CallableScorer(SCORER).score(prompts, texts)
    expected = agreement(rewards, labels, [p.id for p in prompts])
    assert metrics["heldout_pairs"] == expected["pairs"] > 0
    assert metrics["heldout_accuracy"] == pytest.approx(expected["accuracy"])
    assert "agreement with the evaluator" in (run / "report.md").read_text()


def test_measuring_can_be_turned_off(tmp_path, tiny_model_dir, prompt_file):
    assert _run(tmp_path, tiny_model_dir, prompt_file, "reward=sentiment", "reward_model.measure=false") == 0
    assert not (tmp_path / "m" / "reward_model.json").exists()


def test_the_shipped_default_reward_never_saw_a_demo_prompt():
    """The head behind `reward: default` was fitted only on training prompts the demo does not use, so the demo's
    agreement figure for it is held out; and it reads the default policy's states."""
    from spi_align.config import DataConfig
    from spi_align.data.assets import default_reward_dir
    from spi_align.data.prompts import load_prompts
    from spi_align.experiment.demo import DEMO_DEFAULTS

    folder = default_reward_dir()
    fitted = set(json.loads((folder / "training_prompts.json").read_text()))
    demo_train = {p.id for p in load_prompts(DataConfig(split="train", limit=DEMO_DEFAULTS["spi"]["train_prompts"]))}
    demo_eval = {p.id for p in load_prompts(DataConfig(split="eval", limit=DEMO_DEFAULTS["data"]["limit"]))}
    assert len(fitted) > 300 and len(demo_train) == DEMO_DEFAULTS["spi"]["train_prompts"]
    assert not fitted & demo_train and not fitted & demo_eval
    spec = json.loads((folder / "spi_reward.json").read_text())
    assert spec["backbone"] == "default" and spec["head"]["in_features"] == 576  # SmolLM2-135M's hidden size


def test_reward_default_shares_the_default_policys_backbone_and_scores_like_its_own_copy():
    from spi_align.config import Config, build_config
    from spi_align.core.records import Prompt
    from spi_align.policy import load_policy
    from spi_align.scoring import make_scorer
    from spi_align.spi import load_reward

    cfg = build_config(Config, None, ["reward=default"])
    policy = load_policy(cfg.policy, cfg.generation, cfg.seed)
    shared = load_reward(cfg, Path("."), policy)
    assert shared.model.backbone is policy.backbone and shared.from_rows  # reads the rows' end states for free
    prompts = [Prompt(id="1", text="Name a colour."), Prompt(id="2", text="Say hello.")]
    texts = ["Blue is a colour of the sky.", "Hello! How can I help you today?"]
    assert shared.score(prompts, texts) == pytest.approx(make_scorer("default").score(prompts, texts), abs=1e-4)
