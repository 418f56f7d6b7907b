"""The value and reward-model tables of report.md: one row per prefix length, the same number of cells in every line,
and "—" (never "nan") where a figure is undefined, for each value kind's metrics."""

from __future__ import annotations

import math

from spi_align.config import Config
from spi_align.core.records import Prompt
from spi_align.experiment.report import UNDEFINED, write_report
from spi_align.experiment.spi_run import ReusedLabels
from spi_align.runs.rundir import RunDir

NAN = math.nan
ANCHORED = {
    "rollouts": 64, "prompts": 8, "states": 120, "choice_prompts": 1, "heldout_prompts": 2,
    "choice_spearman_at_16": 0.9, "choice_spearman_at_32": 0.8,
    "heldout_partial_reward_spearman_at_16": NAN, "heldout_partial_reward_constant_prompts_at_16": 2,
    "heldout_ranked_prompts_at_16": 2, "heldout_spearman_at_16": 0.25, "heldout_constant_prompts_at_16": 0,
    "heldout_partial_reward_spearman_at_32": 0.5, "heldout_partial_reward_constant_prompts_at_32": 0,
    "heldout_ranked_prompts_at_32": 2, "heldout_spearman_at_32": -0.125, "heldout_constant_prompts_at_32": 0,
    "alpha_at_16": 1.0, "alpha_at_32": 0.5, "ridge": 100.0, "rank_weight": 0.0,
}  # fmt: skip
MODEL = {
    "rollouts": 64, "prompts": 8, "tokens": 900,
    **{f"heldout_{name}_at_{t}": 0.5 for t in (8, 16, 32, "end") for name in ("spearman", "ranked_prompts")},
    **{f"heldout_constant_prompts_at_{t}": 0 for t in (8, 16, 32, "end")},
    "loss_first_epoch": 1.5, "loss_last_epoch": NAN, "trained_parameters": 1000,
    **{f"heldout_partial_reward_spearman_at_{t}": 0.25 for t in (8, 16, 32, "end")},
}  # fmt: skip


def _report(tmp_path, values, reward_model=None) -> str:
    run = RunDir(tmp_path, "r")
    run.commit()
    if reward_model is not None:
        run.write_json("reward_model.json", reward_model)
    cost = {"tokens_generated": 10, "total_seconds": 1.0}
    results = {m: {"evaluator": [0.5, 0.25], "reward": [1.0, 0.0], "cost": cost} for m in ("bon-4", "spi-1")}
    return write_report(run, Config(), results, values, baseline="bon-4")


def _tables(text: str, title: str) -> list[list[list[str]]]:
    """The markdown tables of a section: each a list of rows of stripped cells, header first, separator dropped;
    every line must have as many cells as its header."""
    body = text.split(f"## {title}")[1].split("\n## ")[0].split("![")[0]
    tables = []
    for block in body.split("\n\n"):
        lines = [line for line in block.strip().splitlines() if line.startswith("|")]
        if lines:
            rows = [[cell.strip() for cell in line.strip().strip("|").split("|")] for line in lines]
            assert {len(row) for row in rows} == {len(rows[0])}, block
            tables.append([rows[0], *rows[2:]])
    return tables


def _row(table: list[list[str]], *first: str) -> dict[str, str]:
    """The row of `table` whose first cells are `first`, by header."""
    found = [row for row in table[1:] if row[: len(first)] == list(first)]
    assert len(found) == 1, (first, table)
    return dict(zip(table[0], found[0], strict=True))


def test_anchored_values_get_one_row_per_length_and_a_dash_where_a_figure_is_undefined(tmp_path):
    text = _report(tmp_path, {0: ANCHORED, 1: {**ANCHORED, "heldout_spearman_at_32": NAN}})
    assert "nan" not in text
    lengths, facts = _tables(text, "Value functions")
    assert lengths[0][:2] == ["round", "length"] and len(lengths[0]) <= 10
    assert [row[:2] for row in lengths[1:]] == [["V_0", "16"], ["V_0", "32"], ["V_1", "16"], ["V_1", "32"]]
    row = _row(lengths, "V_0", "16")
    assert row["heldout_partial_reward_spearman"] == UNDEFINED and row["heldout_spearman"] == "0.250"
    assert row["heldout_partial_reward_constant_prompts"] == "2" and row["alpha"] == "1.000"
    assert _row(lengths, "V_0", "32")["heldout_spearman"] == "-0.125"
    assert _row(lengths, "V_1", "32")["heldout_spearman"] == UNDEFINED
    assert _row(facts, "V_1")["ridge"] == "100.000" and _row(facts, "V_0")["heldout_prompts"] == "2"


def test_value_model_tables_have_as_many_header_cells_as_row_cells(tmp_path):
    round1 = {k: v for k, v in MODEL.items() if "partial_reward" not in k}  # a round without the baseline
    text = _report(tmp_path, {0: MODEL, 1: round1})
    assert "nan" not in text
    lengths, facts = _tables(text, "Value functions")  # each line as wide as its header (checked there)
    assert [row[1] for row in lengths[1:]] == ["8", "16", "32", "end"] * 2
    assert [_row(lengths, "V_0", t)["heldout_spearman"] for t in ("8", "16", "32", "end")] == ["0.500"] * 4
    assert _row(lengths, "V_1", "end")["heldout_partial_reward_spearman"] == UNDEFINED
    assert facts[0][:4] == ["round", "rollouts", "prompts", "tokens"]
    assert _row(facts, "V_0")["loss_last_epoch"] == UNDEFINED and _row(facts, "V_0")["trained_parameters"] == "1000"


def test_the_reward_model_table_shows_a_dash_for_an_undefined_figure(tmp_path):
    rm = {
        "pairs": 10, "heldout_pairs": 0, "weight_decay": 0.1, "choice_accuracy": 0.75,
        "choice_accuracy_by_weight_decay": {"0.1": 0.75}, "heldout_accuracy": NAN, "train_accuracy": 0.9,
    }  # fmt: skip
    text = _report(tmp_path, {}, reward_model=rm)
    (table,) = _tables(text, "Reward model")
    row = _row(table, "10")
    assert row["heldout_accuracy"] == UNDEFINED and row["choice_accuracy"] == "0.750"
    assert "choice_accuracy_by_weight_decay" not in row and "nan" not in text


def test_spi_run_ranks_every_rounds_value_against_the_judge_too(tmp_path, tiny_model_dir, monkeypatch):
    """`spi run` labels each round's rollouts with the evaluator (round 0's labels are the reward model's training
    labels), and every V_k reports its held-out ranking against them beside the reward's, in its JSON and report."""
    import json
    from pathlib import Path

    from conftest import write_prompt_file
    from spi_align.cli import main

    scorer = str(Path(__file__).parent / "mocks" / "scorers.py") + ":vowel_share"
    argv = [
        "demo", f"data.prompts={write_prompt_file(tmp_path, 12)}", f"policy.model={tiny_model_dir}",
        f"run_dir={tmp_path}", "name=j", f"evaluator={scorer}", "reward=train", "generation.max_new_tokens=8",
        "data.batch_size=4", "data.limit=2", "spi.chunk=4", "spi.width=2", "spi.successors=2", "spi.tree=[]",
        "spi.rollouts=4", "spi.rounds=2", "spi.value=heads", "spi.train_prompts=12",
    ]  # fmt: skip
    assert main(argv) == 0
    for k in range(2):
        metrics = json.loads((tmp_path / "j" / "values" / f"round-{k}.json").read_text())
        ranked = [key for key in metrics if key.startswith("heldout_spearman_at_")]
        assert ranked, metrics
        for key in ranked:
            for judged in (
                key.replace("heldout_", "heldout_judge_"),
                key.replace("_spearman", "_partial_reward_judge_spearman"),
            ):
                assert judged in metrics and (math.isnan(metrics[judged]) or -1 <= metrics[judged] <= 1), judged
    by_length, _ = _tables((tmp_path / "j" / "report.md").read_text(), "Value functions")
    assert "heldout_judge_spearman" in by_length[0] and "heldout_partial_reward_judge_spearman" in by_length[0]

    def never(self, prompts, responses):
        raise AssertionError("a saved value's rollouts were labelled again")

    monkeypatch.setattr(ReusedLabels, "score", never)  # a rerun loads every V_k: nothing is labelled
    assert main(argv) == 0


def test_reused_labels_ask_the_evaluator_only_for_what_the_run_has_not_read():
    asked = []

    class Judge:
        name = "judge"

        def score(self, prompts, responses):
            asked.append(list(responses))
            return [float(len(r)) for r in responses]

    a, b = Prompt("a", "A?"), Prompt("b", "B?")
    read = ([a, a, b], ["x", "yy", "x"], [10.0, 20.0, 30.0], [])
    labels = ReusedLabels(Judge(), lambda: read)
    assert labels.score([b, a, b, a], ["x", "zzz", "yy", "yy"]) == [30.0, 3.0, 2.0, 20.0]
    assert asked == [["zzz", "yy"]]  # ("b", "yy") was never read: the same text under another prompt is not it
    assert ReusedLabels(Judge(), lambda: None).score([a], ["x"]) == [1.0] and asked[-1] == ["x"]


def test_the_report_compares_each_spi_round_with_the_round_before(tmp_path):
    """Hand-checked: spi-2 wins two prompts and ties two against spi-1 (Δ +0.5, 75%), its reward is 1 lower on each;
    spi-4 has no spi-3 to compare with, and best-of-N is no round. At a budget the frontier adds, each round is
    compared with the round before at that budget (spi-2-w2k2l16 loses every prompt to spi-1-w2k2l16), never with the
    run's own budget or another's (spi-3-w2k2l8 has no spi-2-w2k2l8)."""
    run = RunDir(tmp_path, "r")
    run.commit()
    cost = {"tokens_generated": 10, "total_seconds": 1.0}

    def method(evaluator: list[float], reward: list[float]) -> dict:
        return {"evaluator": evaluator, "reward": reward, "cost": cost}

    results = {
        "bon-4": method([0.0, 0.0, 0.0, 0.0], [0.0] * 4),
        "spi-1": method([0.0, 0.0, 0.5, 0.5], [2.0] * 4),
        "spi-2": method([1.0, 1.0, 0.5, 0.5], [1.0] * 4),
        "spi-4": method([0.0, 0.0, 0.0, 0.0], [0.0] * 4),
        "spi-1-w2k2l16": method([1.0, 1.0, 1.0, 1.0], [0.0] * 4),
        "spi-2-w2k2l16": method([0.75, 0.75, 0.5, 0.5], [0.0] * 4),
        "spi-3-w2k2l8": method([0.0, 0.0, 0.0, 0.0], [0.0] * 4),
    }
    text = write_report(run, Config(), results, {}, baseline="bon-4")
    (table,) = _tables(text, "Round over round")
    assert [row[0] for row in table[1:]] == ["spi-2 vs spi-1", "spi-2-w2k2l16 vs spi-1-w2k2l16"]
    small = _row(table, "spi-2-w2k2l16 vs spi-1-w2k2l16")
    assert small["evaluator Δ [95% CI]"] == "-0.3750 [-0.5000, -0.2500]"
    assert small["win+½tie [95% CI]"] == "0.0% [0.0%, 0.0%]"
    row = _row(table, "spi-2 vs spi-1")
    assert row["evaluator Δ [95% CI]"].startswith("+0.5000 [")
    assert row["win+½tie [95% CI]"].startswith("75.0% [")
    assert row["reward model Δ [95% CI]"] == "-1.0000 [-1.0000, -1.0000]"


def test_a_report_with_one_spi_round_has_no_round_over_round_section(tmp_path):
    assert "Round over round" not in _report(tmp_path, {})
