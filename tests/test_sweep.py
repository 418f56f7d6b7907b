"""`spi sweep`: grid expansion, config hashes, cached cells, round-0 sharing and the Table 1/3-shaped report.

No model runs here: the runner is a fake that writes a results.json from the cell's config.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from spi_align.cli import main
from spi_align.config import Config, to_yaml
from spi_align.core.errors import SpiError
from spi_align.experiment import sweep
from spi_align.experiment.sweep import config_hash, expand, round0_key, run_sweep, share_round0
from spi_align.experiment.sweep_report import _label, cell_rows, render_table, win_tie_loss
from spi_align.experiment.sweep_spec import load_spec


def write_spec(tmp_path: Path, spec: dict[str, Any], name: str = "spec.yaml") -> Path:
    path = tmp_path / name
    spec = {"dir": str(tmp_path / "sweeps"), **spec}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def fake_results(cfg: Config) -> dict[str, Any]:
    """SPI beats best-of-16 on more prompts as the chunk grows; costs equal."""
    n = 4
    wins = min(cfg.spi.chunk // 4, n)
    cost = {"tokens_generated": 100, "total_seconds": 1.0}
    return {
        "sample": {"evaluator": [0.0] * n, "reward": [0.0] * n, "cost": cost},
        "bon-16": {"evaluator": [0.5] * n, "reward": [0.5] * n, "cost": cost},
        "spi-1": {"evaluator": [1.0] * wins + [0.0] * (n - wins), "reward": [0.5] * n, "cost": cost},
    }


class FakeRunner:
    """Stands in for `rounds.spi_run`: records each config and writes its run directory's results.json."""

    def __init__(self) -> None:
        self.configs: list[Config] = []

    def __call__(self, cfg: Config) -> str:
        self.configs.append(cfg)
        run = Path(cfg.run_dir) / cfg.name
        run.mkdir(parents=True, exist_ok=True)
        (run / "config.yaml").write_text(to_yaml(cfg))
        (run / "rollouts-0.jsonl").write_text('{"id": "0"}\n')
        (run / "results.json").write_text(json.dumps({"results": fake_results(cfg), "values": {}}))
        return "report"


GRID = {"spi.chunk": [4, 8, 16], "spi.train_prompts": [16, 32]}


def test_grid_expands_to_every_combination(tmp_path):
    spec, folder = load_spec(write_spec(tmp_path, {"name": "s", "config": {"data": {"limit": 8}}, "grid": GRID}))
    cells = expand(spec, folder)
    assert [(c.settings["spi.chunk"], c.settings["spi.train_prompts"]) for c in cells] == [
        (4, 16), (4, 32), (8, 16), (8, 32), (16, 16), (16, 32),
    ]  # fmt: skip
    assert all(c.config.data.limit == 8 for c in cells)
    assert [(c.config.spi.chunk, c.config.spi.train_prompts) for c in cells][3] == (8, 32)
    assert len({c.key for c in cells}) == 6
    assert all(c.config.name == c.key and c.path == folder / "cells" / c.key for c in cells)


def test_variants_combine_with_the_grid(tmp_path):
    variants = [{"spi.selection": "diversity"}, {"spi.selection": "softmax", "spi.temperature": 0.5}]
    spec, folder = load_spec(write_spec(tmp_path, {"grid": {"spi.chunk": [4, 8]}, "variants": variants}))
    cells = expand(spec, folder)
    assert [(c.config.spi.chunk, c.config.spi.selection, c.config.spi.temperature) for c in cells] == [
        (4, "diversity", 1.0), (4, "softmax", 0.5), (8, "diversity", 1.0), (8, "softmax", 0.5),
    ]  # fmt: skip


def test_hash_is_stable_and_independent_of_how_the_spec_is_written(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("spi: {rounds: 1, betas: [1, 2]}\ndata: {limit: 4}\nname: ignored\n")
    one = write_spec(tmp_path, {"base": "base.yaml", "grid": GRID}, "one.yaml")
    other = write_spec(
        tmp_path,
        {
            "base": "base.yaml",
            "config": {"data": {"limit": 4}, "spi": {"betas": [1.0, 2.0]}},
            "grid": {"spi.train_prompts": [32, 16], "spi.chunk": [16, 8, 4]},
        },
        "other.yaml",
    )
    keys_one = {c.key for c in expand(*load_spec(one))}
    assert keys_one == {c.key for c in expand(*load_spec(one))}  # stable between expansions
    assert keys_one == {c.key for c in expand(*load_spec(other))}  # key order, value order, 1 vs 1.0
    cfg = Config()
    assert config_hash(cfg) == config_hash(cfg.model_copy(update={"name": "x", "run_dir": "elsewhere"}))
    assert config_hash(cfg) != config_hash(Config(seed=1))


def test_spec_errors_are_one_line(tmp_path):
    with pytest.raises(SpiError, match="unknown key 'spi.chunks'"):
        expand(*load_spec(write_spec(tmp_path, {"grid": {"spi.chunks": [4]}})))
    with pytest.raises(SpiError, match="'spi.chunk' has no values"):
        load_spec(write_spec(tmp_path, {"grid": {"spi.chunk": []}}))
    with pytest.raises(SpiError, match="spi.chunk"):
        expand(*load_spec(write_spec(tmp_path, {"grid": {"spi.chunk": [0]}})))
    with pytest.raises(SpiError, match="griid"):
        load_spec(write_spec(tmp_path, {"griid": {"spi.chunk": [4]}}))


def test_cached_cells_are_skipped_and_missing_ones_run(tmp_path):
    path = write_spec(tmp_path, {"name": "s", "grid": GRID})
    runner = FakeRunner()
    cells, folder = run_sweep(path, runner=runner, log=lambda line: None)
    assert len(runner.configs) == 6 and {c.name for c in runner.configs} == {c.key for c in cells}
    again = FakeRunner()
    run_sweep(path, runner=again, log=lambda line: None)
    assert again.configs == []
    (cells[2].path / "results.json").unlink()
    run_sweep(path, runner=again, log=lambda line: None)
    assert [c.name for c in again.configs] == [cells[2].key]
    for i in (0, 1, 3):
        (cells[i].path / "results.json").unlink()
    limited = FakeRunner()
    run_sweep(path, runner=limited, log=lambda line: None, max_cells=2)  # a long sweep in pieces
    assert [c.name for c in limited.configs] == [cells[0].key, cells[1].key]
    assert json.loads((folder / "cells.json").read_text())["cells"][2]["key"] == cells[2].key


def test_sweep_command_with_dry_run_and_a_fake_spi_run(tmp_path, monkeypatch, capsys):
    path = write_spec(tmp_path, {"name": "cli", "grid": {"spi.chunk": [4, 16]}})
    runner = FakeRunner()
    monkeypatch.setattr(sweep, "default_runner", runner)
    assert main(["sweep", str(path), "--dry-run"]) == 0
    assert runner.configs == [] and "2 to run" in capsys.readouterr().out
    assert main(["sweep", str(path)]) == 0
    assert len(runner.configs) == 2
    folder = tmp_path / "sweeps" / "cli"
    assert (folder / "table.md").is_file() and (folder / "fig5_chunk.png").is_file()


def test_round0_is_shared_between_cells_that_differ_only_in_the_search(tmp_path):
    # plain samples and heads: the chunk length changes only the search
    plain = {"spi": {"tree": [], "value": "heads"}}
    spec, folder = load_spec(write_spec(tmp_path, {"grid": GRID, "config": plain}))
    cells = expand(spec, folder)
    donor = cells[0]  # chunk 4, 16 training prompts
    donor.path.mkdir(parents=True)
    (donor.path / "config.yaml").write_text(to_yaml(donor.config))
    (donor.path / "values" / "round-0").mkdir(parents=True)
    (donor.path / "values" / "round-0" / "value_head.json").write_text("{}")
    (donor.path / "rollouts-0.jsonl").write_text('{"id": "0"}\n')
    (donor.path / "eval-bon-16.jsonl").write_text('{"id": "1"}\n')
    (donor.path / "eval-spi-1.jsonl").write_text('{"id": "1"}\n')
    same_round0 = cells[2]  # chunk 8, 16 training prompts
    assert round0_key(same_round0.config) == round0_key(donor.config)
    (donor.path / "eval-w2s.jsonl").write_text('{"id": "1"}\n')
    (donor.path / "dpo").mkdir()
    (donor.path / "dpo" / "model.safetensors").write_bytes(b"weights")
    assert sorted(share_round0(same_round0)) == [
        "dpo", "eval-bon-16.jsonl", "rollouts-0.jsonl", "values/round-0",
    ]  # fmt: skip
    assert (same_round0.path / "values" / "round-0" / "value_head.json").is_file()
    assert (same_round0.path / "dpo" / "model.safetensors").read_bytes() == b"weights"
    assert not (same_round0.path / "eval-spi-1.jsonl").exists()  # SPI's own evaluation is never shared
    assert not (same_round0.path / "eval-w2s.jsonl").exists()  # nor weak-to-strong search (it uses W, K, L)
    other_data = cells[1]  # chunk 4, 32 training prompts: another round 0
    assert round0_key(other_data.config) != round0_key(donor.config)
    assert share_round0(other_data) == []
    assert share_round0(same_round0) == []  # what is there already is kept


def test_round0_depends_on_the_chunk_for_tree_rollouts_and_anchored_values(tmp_path):
    """A sampling tree branches at chunk boundaries and anchored values are fitted at L, 2L, ...: cells with other
    chunk lengths must not share round 0; the same chunk still does."""
    for config in ({"spi": {"tree": [4, 2], "value": "heads"}}, {"spi": {"tree": [], "value": "anchored"}}):
        spec, folder = load_spec(write_spec(tmp_path, {"grid": GRID, "config": config}))
        cells = expand(spec, folder)  # chunk 4 / 16 prompts, chunk 4 / 32, chunk 8 / 16, ...
        assert round0_key(cells[0].config) != round0_key(cells[2].config)
        again = Config.model_validate(
            {**cells[0].config.model_dump(), "spi": {**cells[0].config.spi.model_dump(), "gamma": 2.0}}
        )
        assert round0_key(again) == round0_key(cells[0].config)


def test_a_cell_that_only_adds_baselines_reuses_round_0_and_spi_but_not_other_baselines(tmp_path):
    grid = {"baselines.dpo": [False, True]}
    spec, folder = load_spec(write_spec(tmp_path, {"grid": grid, "config": {"baselines": {"dpo_lr": 1e-5}}}))
    plain, with_dpo = expand(spec, folder)
    assert round0_key(plain.config) == round0_key(with_dpo.config)
    plain.path.mkdir(parents=True)
    (plain.path / "config.yaml").write_text(to_yaml(plain.config))
    for name in ("rollouts-0.jsonl", "rollouts-1.jsonl", "eval-spi-2.jsonl", "eval-dpo.jsonl", "eval-bon-16.jsonl"):
        (plain.path / name).write_text('{"id": "0"}\n')
    (plain.path / "values" / "round-1").mkdir(parents=True)
    assert sorted(share_round0(with_dpo)) == [
        "eval-bon-16.jsonl", "eval-spi-2.jsonl", "rollouts-0.jsonl", "rollouts-1.jsonl", "values/round-1",
    ]  # fmt: skip
    # the DPO evaluation depends on the baseline settings, which differ: computed again, not copied
    assert not (with_dpo.path / "eval-dpo.jsonl").exists()


def test_cells_with_other_beam_shapes_share_round_0_its_states_and_best_of_n_only_at_the_same_candidate_count(
    tmp_path,
):
    variants = [{"spi.width": 4, "spi.successors": 4}, {"spi.width": 2, "spi.successors": 8}, {"spi.width": 2}]
    spec, folder = load_spec(write_spec(tmp_path, {"variants": variants}))
    square, wide, narrow = expand(spec, folder)
    assert round0_key(square.config) == round0_key(wide.config) == round0_key(narrow.config)
    square.path.mkdir(parents=True)
    (square.path / "config.yaml").write_text(to_yaml(square.config))
    for name in ("rollouts-0.jsonl", "eval-bon-16.jsonl", "eval-spi-1.jsonl"):
        (square.path / name).write_text('{"id": "0"}\n')
    (square.path / "values" / "round-0").mkdir(parents=True)
    (square.path / "rollouts-0.states").mkdir()  # round 0's prefix states: not computed again
    (square.path / "rollouts-0.states" / "states.safetensors").write_bytes(b"states")
    round0 = ["rollouts-0.jsonl", "rollouts-0.states", "values/round-0"]
    # W = 2, K = 8 is compared with the same best-of-16; SPI's own search is never shared
    assert sorted(share_round0(wide)) == sorted(["eval-bon-16.jsonl", *round0])
    assert (wide.path / "rollouts-0.states" / "states.safetensors").read_bytes() == b"states"
    # W = 2, K = 4 is compared with best-of-8, which nothing computed yet
    assert sorted(share_round0(narrow)) == round0


def test_a_cell_with_another_value_kind_reuses_rollouts_and_reward_model_but_not_v0(tmp_path):
    spec, folder = load_spec(write_spec(tmp_path, {"grid": {"spi.value": ["heads", "model"]}}))
    heads, model = expand(spec, folder)
    heads.path.mkdir(parents=True)
    (heads.path / "config.yaml").write_text(to_yaml(heads.config))
    for name in ("rollouts-0.jsonl", "eval-bon-16.jsonl", "reward_model.json", "eval-spi-1.jsonl", "eval-dpo.jsonl"):
        (heads.path / name).write_text('{"id": "0"}\n')
    (heads.path / "values" / "round-0").mkdir(parents=True)
    shared = ["eval-bon-16.jsonl", "eval-dpo.jsonl", "reward_model.json", "rollouts-0.jsonl"]
    assert sorted(share_round0(model)) == shared  # V_0 and SPI's rounds depend on the value kind: not shared


def test_win_tie_loss_per_prompt():
    assert win_tie_loss([1.0, 0.2, 0.5, 0.3], [0.0, 0.2, 0.7, 0.3 + 1e-9]) == [1.0, 0.5, 0.0, 0.5]
    with pytest.raises(ValueError):
        win_tie_loss([1.0], [1.0, 2.0])


def test_table_rows_from_hand_made_results():
    results = {
        "bon-16": {"evaluator": [0.5, 0.5, 0.5, 0.5], "reward": [1, 1, 1, 1], "cost": {"tokens_generated": 200}},
        "spi-2": {"evaluator": [0.9, 0.5, 0.9, 0.1], "reward": [2, 2, 0, 0], "cost": {"tokens_generated": 180}},
        "spi-1": {"evaluator": [0.9, 0.9, 0.1, 0.1], "reward": [1, 1, 1, 1], "cost": {"tokens_generated": 190}},
    }
    cfg = Config.model_validate({"spi": {"train_prompts": 32, "rollouts": 8}})
    rows = cell_rows({"spi.chunk": 16}, cfg, results, "bon-16")
    assert [r["method"] for r in rows] == ["spi-1", "spi-2"]
    spi2 = rows[1]
    assert (spi2["win"], spi2["tie"], spi2["win_half_tie"]) == (0.5, 0.25, 0.625)
    assert spi2["reward_win_half_tie"] == 0.5 and spi2["data_size"] == 256
    assert spi2["tokens_vs_baseline"] == pytest.approx(0.9)
    assert spi2["ci"][0] <= 0.625 <= spi2["ci"][1]
    table = render_table(rows, ["spi.chunk"], "bon-16", "t")
    assert "| 16 | 256 | spi-2 | 50.0% | 25.0% | 62.5% [" in table
    assert "judge" not in table.split("\n\n", 2)[2]  # no judge column without judge results


def test_data_size_is_the_rollouts_v0_was_fitted_on_when_the_cell_recorded_them(tmp_path: Path) -> None:
    """With the whole training split (train_prompts None) the config gives no size: the fit's own count is read
    (a tree's rows that ended early make it fewer than prompts × leaves); without either it is n/a, not 0."""
    results = {
        "bon-16": {"evaluator": [0.5, 0.5], "reward": [1, 1], "cost": {"tokens_generated": 20}},
        "spi-1": {"evaluator": [0.9, 0.1], "reward": [1, 1], "cost": {"tokens_generated": 20}},
    }
    cfg = Config.model_validate({"spi": {"train_prompts": None, "tree": [4, 2]}})
    assert cell_rows({}, cfg, results, "bon-16", tmp_path)[0]["data_size"] is None
    (tmp_path / "values").mkdir()
    (tmp_path / "values" / "round-0.json").write_text(json.dumps({"rollouts": 3601, "prompts": 459}))
    rows = cell_rows({}, cfg, results, "bon-16", tmp_path)
    assert rows[0]["data_size"] == 3601
    assert "| 3601 | spi-1 |" in render_table(rows, [], "bon-16", "t")
    cfg = Config.model_validate({"spi": {"train_prompts": 32, "tree": [4, 2]}})
    assert cell_rows({}, cfg, results, "bon-16")[0]["data_size"] == 256


def test_rows_carry_the_evaluator_means_and_the_learned_reward_models_held_out_figures(tmp_path: Path) -> None:
    results = {
        "sample": {"evaluator": [0.2, 0.4], "reward": [0, 0], "cost": {"tokens_generated": 2}},
        "bon-4": {"evaluator": [0.5, 0.3], "reward": [1, 1], "cost": {"tokens_generated": 8}},
        "spi-1": {"evaluator": [0.9, 0.1], "reward": [2, 0], "cost": {"tokens_generated": 8}},
    }
    cfg = Config.model_validate({"spi": {"train_prompts": 32, "rollouts": 8}})
    (row,) = cell_rows({}, cfg, results, "bon-4", tmp_path)
    assert row["eval_means"] == pytest.approx({"sample": 0.3, "baseline": 0.4, "spi": 0.5})
    assert row["reward_model_heldout"] is None  # no reward model fitted in this cell
    assert "RM held out" not in render_table([row], [], "bon-4", "t").split("\n\n", 2)[2]  # no column either
    assert "| 0.300 / 0.400 / 0.500 |" in render_table([row], [], "bon-4", "t")
    metrics = {"heldout_accuracy": 0.5682, "heldout_spearman_with_labeller": 0.1735, "pairs": 10}
    (tmp_path / "reward_model.json").write_text(json.dumps(metrics))
    del results["sample"]
    (row,) = cell_rows({}, cfg, results, "bon-4", tmp_path)
    assert row["reward_model_heldout"] == {"accuracy": 0.5682, "spearman": 0.1735}
    table = render_table([row], [], "bon-4", "t")
    assert "| n/a / 0.400 / 0.500 | 0.568, 0.17 |" in table
    (tmp_path / "reward_model.json").write_text(json.dumps({**metrics, "measured_on": "training prompts"}))
    assert cell_rows({}, cfg, results, "bon-4", tmp_path)[0]["reward_model_heldout"] is None  # not held out
    (tmp_path / "reward_model.json").write_text(json.dumps({**metrics, "heldout_accuracy": float("nan")}))
    (row,) = cell_rows({}, cfg, results, "bon-4", tmp_path)
    assert row["reward_model_heldout"] is None  # no held-out prompts: undefined, no "nan" cell
    other = {**row, "baseline": "bon-16", "eval_means": {"baseline": 0.25, "spi": 0.5}}
    assert "| n/a / 0.250 (bon-16) / 0.500 |" in render_table([row, other], [], "bon-4 / bon-16", "t")


def test_table_spells_settings_as_the_sweep_yaml_does_and_undefined_figures_as_na(tmp_path: Path) -> None:
    """The whole training split (train_prompts: null) reads "null", not Python's "None"; a missing or
    non-finite ratio or rate reads "n/a", not "nan" or "inf"."""
    results = {
        "bon-4": {"evaluator": [0.5, 0.3], "reward": [1, 1], "cost": {"tokens_generated": 8}},
        "spi-1": {"evaluator": [0.9, 0.1], "reward": [2, 0], "cost": {"tokens_generated": 8}},
    }
    cfg = Config.model_validate({"spi": {"train_prompts": None}})
    settings = {"spi.train_prompts": None, "spi.chunk": 8, "spi.selection": "top"}
    (row,) = cell_rows(settings, cfg, results, "bon-4", tmp_path)
    row["forward_tokens_vs_baseline"] = float("inf")
    row["tie"] = float("nan")
    line = render_table([row], list(settings), "bon-4", "t").splitlines()[-1]
    assert line.startswith("| null | 8 | top | n/a | spi-1 | 50.0% | n/a |") and "None" not in line
    assert "| 1.00× | n/a | 2 |" in line
    assert _label(settings, ["spi.train_prompts", "spi.selection"]) == "train_prompts=null, selection=top"
    assert _label({"spi.base_logprob": True, "spi.betas": [1.0, 2.0]}, ["spi.base_logprob", "spi.betas"]) == (
        "base_logprob=true, betas=[1.0, 2.0]"
    )


def test_sweep_report_shapes_table_and_figures(tmp_path):
    variants = [{"spi.selection": "diversity"}, {"spi.selection": "top"}, {"spi.selection": "softmax"}]
    path = write_spec(tmp_path, {"name": "r", "grid": {"spi.chunk": [4, 16]}, "variants": variants})
    cells, folder = run_sweep(path, runner=FakeRunner(), log=lambda line: None)
    judge_dir = cells[0].path / "judge" / "stand-in"
    judge_dir.mkdir(parents=True)
    (judge_dir / "results.json").write_text(
        json.dumps({"baseline": "bon-16", "methods": {"spi-1": {"win_half_tie": 0.75}}})
    )
    run_sweep(path, runner=FakeRunner(), log=lambda line: None)  # all cached: the report is rewritten
    data = json.loads((folder / "table.json").read_text())
    assert data["varying"] == ["spi.chunk", "spi.selection"] and data["baseline"] == "bon-16"
    rates = [(r["settings"]["spi.chunk"], r["settings"]["spi.selection"], r["win_half_tie"]) for r in data["rows"]]
    assert rates[:2] == [(4, "diversity", 0.25), (4, "top", 0.25)] and rates[-1] == (16, "softmax", 1.0)
    assert data["rows"][0]["judge_win_half_tie"] == 0.75 and data["rows"][1]["judge_win_half_tie"] is None
    table = (folder / "table.md").read_text()
    assert "judge win+½tie" in table and "| 16 | softmax | 512 | spi-1 | 100.0% |" in table
    assert (folder / "fig5_chunk.png").stat().st_size > 0 and (folder / "fig4_strategies.png").stat().st_size > 0
    assert "prompt" not in json.dumps(data["rows"][0]["settings"])  # numbers only, no texts


def test_sweeps_naming_one_cells_folder_share_identical_cells(tmp_path):
    cells_dir = str(tmp_path / "shared-cells")
    chunks = write_spec(tmp_path, {"name": "chunks", "cells": cells_dir, "grid": {"spi.chunk": [4, 16]}}, "a.yaml")
    strategies = write_spec(
        tmp_path,
        {
            "name": "strategies",
            "cells": cells_dir,
            "config": {"spi": {"chunk": 16}},
            "grid": {"spi.selection": ["diversity", "top"]},
        },
        "b.yaml",
    )
    run_sweep(chunks, runner=FakeRunner(), log=lambda line: None)
    runner = FakeRunner()
    cells, _ = run_sweep(strategies, runner=runner, log=lambda line: None)
    assert [c.spi.selection for c in runner.configs] == ["top"]  # chunk 16 with diversity-first was done
    assert (cells[1].path / "rollouts-0.jsonl").is_file()
