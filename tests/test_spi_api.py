"""Algorithm 1 as a library API and the anchored value kind: `spi run` with `spi.value=anchored`, then the improved
policy loaded back from the run and saved again; the anchored maths on hand-checked cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import write_prompt_file
from spi_align.cli import main
from spi_align.core.errors import SpiError
from spi_align.core.records import Cost, Prompt
from spi_align.scoring.ranking import centred, differing_pairs, group_rows
from spi_align.scoring.train_reward import all_pairs
from spi_align.spi import load
from spi_align.values.anchored import boundary_rows, decision_lengths, fit_anchored, ranking_pairs
from spi_align.values.prefix_states import PrefixStates

SCORER = str(Path(__file__).parent / "mocks" / "scorers.py") + ":vowel_share"


def run_args(tmp_path: Path, name: str, model: Path, prompts: Path, *extra: str) -> list[str]:
    return [
        "demo", f"run_dir={tmp_path}", f"name={name}", f"policy.model={model}", f"data.prompts={prompts}",
        f"evaluator={SCORER}", "reward=train", "generation.max_new_tokens=8", "data.batch_size=2",
        "spi.chunk=3", "spi.width=2", "spi.successors=2", "spi.rollouts=4", "spi.rounds=2", *extra,
    ]  # fmt: skip


@pytest.fixture
def prompt_file(tmp_path) -> Path:
    return write_prompt_file(tmp_path, 6)


def test_anchored_run_reports_the_partial_reward_baseline_and_loads_back(tmp_path, tiny_model_dir, prompt_file):
    assert main(run_args(tmp_path, "anch", tiny_model_dir, prompt_file, "spi.value=anchored")) == 0
    run = tmp_path / "anch"
    reward = json.loads((run / "reward_model.json").read_text())
    assert reward["pairs"] > 0 and 0.0 <= reward["train_accuracy"] <= 1.0
    v0 = json.loads((run / "values" / "round-0.json").read_text())
    alphas = [v for k, v in v0.items() if k.startswith("alpha_at_")]
    assert alphas and set(alphas) <= {0.0, 0.5, 1.0} and v0["rank_weight"] in (0.0, 1.0)
    assert any(k.startswith("heldout_partial_reward_spearman_at_") for k in v0), v0
    report = (run / "report.md").read_text()
    assert "| heldout_partial_reward_spearman |" in report and "| V_0 | 3 |" in report and "| nan" not in report

    improved = load(run)
    assert improved.available_methods() == ["sample", "bon-4", "spi-1", "spi-2"]
    v1 = json.loads((run / "values" / "round-1.json").read_text())  # V_1 from π_1's own search rollouts
    alphas1 = [v for k, v in v1.items() if k.startswith("alpha_at_")]
    assert v1["rollouts"] > 0 and alphas1 and set(alphas1) <= {0.0, 0.5, 1.0}
    prompts = [Prompt("x", "Name a fruit."), Prompt("y", "Say hello.")]
    improved.policy.reseed(3)
    first = improved.method("spi-1").run(prompts, Cost())
    saved = improved.save(tmp_path / "saved")
    again = load(saved)
    again.policy.reseed(3)
    second = again.method("spi-1").run(prompts, Cost())
    assert [r.chosen.text for r in first] == [r.chosen.text for r in second]
    assert [r.chosen.score for r in first] == pytest.approx([r.chosen.score for r in second])
    wider = again.method("spi-1", width=1, successors=3, chunk=2)
    assert (wider.width, wider.successors, wider.chunk) == (1, 3, 2)
    with pytest.raises(SpiError, match="spi-1 .. spi-2"):
        again.method("spi-3")
    with pytest.raises(SpiError, match="unknown method"):
        again.method("beam-of-light")


def test_load_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(SpiError, match="no config.yaml"):
        load(tmp_path)


def test_all_pairs_orients_every_differing_pair_within_a_prompt():
    groups = ["a", "a", "a", "b", "b"]
    labels = [0.1, 0.5, 0.5, 2.0, 1.0]
    # a: 1>0, 2>0 (1 and 2 tie: no pair); b: 3>4; never across prompts
    assert sorted(all_pairs(groups, labels)) == [(1, 0), (2, 0), (3, 4)]


def test_differing_pairs_keep_row_order_and_both_pair_lists_read_them():
    keys = ["a", "b", "a", "a", "b"]
    labels = [0.5, 1.0, 2.0, 0.5, 3.0]
    assert group_rows(keys) == {"a": [0, 2, 3], "b": [1, 4]}
    # a: rows (0, 2) → 2 over 0; (0, 3) tie; (2, 3) → 2 over 3; b: (1, 4) → 4 over 1
    assert differing_pairs(keys, labels) == [[(2, 0), (2, 3)], [(4, 1)]]
    assert all_pairs(keys, labels) == [(2, 0), (2, 3), (4, 1)]
    better, worse = ranking_pairs(torch.tensor(labels), keys)
    assert (better.tolist(), worse.tolist()) == ([2, 2, 4], [0, 3, 1])
    # all_pairs orders a prompt's pairs by the chosen sample, ranking_pairs by the rows' order
    assert all_pairs(["p"] * 3, [1.0, 3.0, 2.0]) == [(1, 0), (1, 2), (2, 0)]
    assert ranking_pairs([1.0, 3.0, 2.0], ["p"] * 3)[0].tolist() == [1, 2, 1]


def test_decision_lengths_are_the_chunk_boundaries_before_the_end():
    assert decision_lengths(16, 64) == [16, 32, 48]
    assert decision_lengths(3, 8) == [3, 6]


def test_centred_subtracts_each_keys_mean():
    values = torch.tensor([1.0, 3.0, 10.0, 4.0])
    assert centred(values, ["p", "p", "q", "p"]).tolist() == pytest.approx([-1.6667, 0.3333, 0.0, 1.3333], abs=1e-4)


def _states(closed_rows: list[list[list[float]]], lengths: list[list[int]]) -> list[PrefixStates]:
    return [
        PrefixStates(ls, torch.zeros(len(ls), len(rows[0])), torch.tensor(rows))
        for rows, ls in zip(closed_rows, lengths, strict=True)
    ]


def test_boundary_rows_keep_only_unfinished_rollouts_at_decision_lengths():
    states = _states([[[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]], [[4.0, 0.0], [5.0, 0.0]]], [[2, 4, 5], [2, 4]])
    x, final, keys, index = boundary_rows(states, [2, 4], rewards=[7.0, 9.0], groups=["p", "q"])
    # rollout 0 (5 tokens) is live at 2 and 4; rollout 1 ended at 4, so only its length-2 state is a decision point
    assert keys == [("p", 2), ("p", 4), ("q", 2)] and index == [0, 0, 1]
    assert x[:, 0].tolist() == [1.0, 2.0, 4.0] and final.tolist() == [7.0, 7.0, 9.0]


def test_anchored_value_learns_a_residual_that_ranks_better_and_keeps_it():
    """Final reward = anchor (feature 0) + 2·feature 1: the anchor alone ranks imperfectly; the residual head on the
    same states recovers feature 1, so α = 1 is chosen and the held-out ranking becomes perfect."""
    gen = torch.Generator().manual_seed(0)
    states, rewards, groups = [], [], []
    for p in range(20):
        for _ in range(6):
            f = torch.randn(3, 2, generator=gen)
            states.append(PrefixStates([4, 8, 12], torch.zeros(3, 2), f))
            rewards.append(float(f[0, 0] + 2 * f[0, 1]))  # what the state at length 4 says about the end
            groups.append(f"p{p}")
    head = torch.nn.Linear(2, 1)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[1.0, 0.0]]))
        head.bias.zero_()
    value, metrics = fit_anchored(states, rewards, groups, head, [4], ridge=1e-3, seed=0)
    assert metrics["alpha_at_4"] == 1.0 and value.alphas == [1.0] and value.learned
    assert metrics["heldout_spearman_at_4"] > 0.99 > metrics["heldout_partial_reward_spearman_at_4"]
    torch.testing.assert_close(value.head.affine()[0], torch.tensor([0.0, 2.0]), atol=0.05, rtol=0.0)


def test_anchored_value_drops_a_residual_that_does_not_help():
    """Final reward = the anchor exactly: any learned residual only adds noise, so α = 0 (V = the partial reward)."""
    gen = torch.Generator().manual_seed(1)
    states, rewards, groups = [], [], []
    for p in range(20):
        for _ in range(6):
            f = torch.randn(2, 8, generator=gen)
            states.append(PrefixStates([4, 8], torch.zeros(2, 8), f))
            rewards.append(float(f[0, 0]) + 0.0)
            groups.append(f"p{p}")
    head = torch.nn.Linear(8, 1)
    with torch.no_grad():
        head.weight.zero_()
        head.weight[0, 0] = 1.0
        head.bias.zero_()
    value, metrics = fit_anchored(states, rewards, groups, head, [4], ridge=1.0, seed=0)
    assert metrics["heldout_partial_reward_spearman_at_4"] == pytest.approx(1.0)
    assert metrics["alpha_at_4"] == 0.0 and value.alphas == [0.0] and not value.learned
