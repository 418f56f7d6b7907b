"""The compute frontier: the best-of-N subset estimator pinned on hand-checked cases and against enumerating every
subset, the break-even arithmetic on a hand case, bad frontier configs as one line, and `spi run` with the frontier
on the tiny model writing its table, JSON and plot, then resuming without sampling again."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from spi_align.cli import main
from spi_align.config import to_yaml
from spi_align.core.errors import SpiError
from spi_align.experiment.frontier import labelled_points, matched_size, paired_table, paired_with_best_of_n
from spi_align.experiment.frontier_maths import (
    argmax_weights,
    best_of_n_estimate,
    break_even,
    per_query,
    win_against_best_of_n,
)
from spi_align.experiment.sweep import expand, round0_key, share_round0
from spi_align.experiment.sweep_spec import load_spec
from spi_align.search.registry import parse_spi_name, spi_name, spi_rounds

ROOT = Path(__file__).resolve().parents[1]
SCORER = str(ROOT / "tests" / "mocks" / "scorers.py") + ":vowel_share"


def brute_force(rewards: list[float], scores: list[float], size: int) -> float:
    """Mean over every `size`-subset of the score of its reward argmax, a tie broken uniformly at random."""
    values = []
    for subset in itertools.combinations(range(len(rewards)), size):
        best = max(rewards[i] for i in subset)
        values.append(np.mean([scores[i] for i in subset if rewards[i] == best]))
    return float(np.mean(values))


@pytest.mark.parametrize(("size", "expected"), [(1, 25.0), (2, 200 / 6), (3, 37.5), (4, 40.0)])
def test_distinct_rewards_weigh_each_rank_by_the_subsets_it_tops(size, expected):
    # ascending ranks 1..4 top C(i-1, N-1) of the C(4, N) subsets; given in shuffled order
    rewards, scores = [3.0, 1.0, 4.0, 2.0], [30.0, 10.0, 40.0, 20.0]
    assert best_of_n_estimate(rewards, scores, size) == pytest.approx(expected)


@pytest.mark.parametrize(("size", "expected"), [(1, 25.0), (2, 30.0), (3, 30.0), (4, 30.0)])
def test_tied_rewards_share_their_probability_and_count_with_their_mean_score(size, expected):
    # sorted: r=1 (10), r=2 (30), then a tie at r=3 (20, 40): the tie tops 5/6 of the pairs and every triple, and
    # counts with its mean 30, never with the first or the best of its scores
    rewards, scores = [1.0, 3.0, 3.0, 2.0], [10.0, 20.0, 40.0, 30.0]
    assert best_of_n_estimate(rewards, scores, size) == pytest.approx(expected)
    assert best_of_n_estimate(rewards, scores, size) == pytest.approx(brute_force(rewards, scores, size))


def test_n_equal_to_the_samples_is_the_argmax_and_one_is_the_mean():
    scores = [0.2, 0.9, 0.4, 0.7, 0.1]
    assert best_of_n_estimate([5, 1, 2, 3, 4], scores, 5) == pytest.approx(0.2)
    assert best_of_n_estimate([5, 1, 5, 3, 4], scores, 5) == pytest.approx((0.2 + 0.4) / 2)
    assert best_of_n_estimate([5, 1, 5, 3, 4], scores, 1) == pytest.approx(np.mean(scores))
    assert best_of_n_estimate([2.0] * 5, scores, 3) == pytest.approx(np.mean(scores))  # all tied: any N is the mean


def test_the_estimate_equals_enumerating_every_subset_on_random_cases():
    rng = random.Random(7)
    for _ in range(10):
        n = rng.randint(2, 9)
        rewards = [float(rng.choice([0, 1, 2, 3, 4])) for _ in range(n)]  # ties are likely
        scores = [rng.random() for _ in range(n)]
        for size in range(1, n + 1):
            assert best_of_n_estimate(rewards, scores, size) == pytest.approx(brute_force(rewards, scores, size))
    weights = argmax_weights(64, 16)
    assert weights.sum() == pytest.approx(1.0) and weights[:15].sum() == 0.0


def outcome(ours: float, theirs: float) -> float:
    """1 for a win, ½ for a tie (within the estimator's 1e-6), 0 for a loss."""
    return 0.5 if abs(ours - theirs) <= 1e-6 else float(ours > theirs)


def test_the_win_against_best_of_n_is_against_a_draw_not_against_its_expected_score():
    # rewards 1, 2, 3 with judge 0.2, 0.9, 0.5; ours 0.6 beats the first and third sample, loses to the second.
    # N = 2: the pairs {1,2} {1,3} {2,3} pick samples 2, 3, 3 -> wins 0, 1, 1 -> 2/3; N = 3 picks sample 3 -> 1
    rewards, scores = [1.0, 2.0, 3.0], [0.2, 0.9, 0.5]
    assert win_against_best_of_n(0.6, rewards, scores, 1) == pytest.approx(2 / 3)
    assert win_against_best_of_n(0.6, rewards, scores, 2) == pytest.approx(2 / 3)
    assert win_against_best_of_n(0.6, rewards, scores, 3) == pytest.approx(1.0)
    assert win_against_best_of_n(0.5, rewards, scores, 3) == pytest.approx(0.5)  # a tie with the pick
    # BoN-2's expected score is (0.9 + 0.5 + 0.5) / 3 = 0.633: 0.6 is below it, yet wins two draws in three
    assert best_of_n_estimate(rewards, scores, 2) > 0.6
    rng = random.Random(3)
    for _ in range(10):
        n = rng.randint(2, 8)
        rewards = [float(rng.choice([0, 1, 2, 3])) for _ in range(n)]
        scores = [float(rng.choice([0.1, 0.4, 0.7])) for _ in range(n)]  # ties with ours are likely
        ours = rng.choice([0.1, 0.4, 0.55, 0.7])
        outcomes = [outcome(ours, j) for j in scores]
        for size in range(1, n + 1):
            expected = brute_force(rewards, outcomes, size)
            assert win_against_best_of_n(ours, rewards, scores, size) == pytest.approx(expected)


def test_the_matched_best_of_n_is_the_smallest_that_costs_at_least_as_much():
    bon = [{"size": 1, "tokens": 60.0}, {"size": 16, "tokens": 960.0}, {"size": 17, "tokens": 1020.0}]
    assert matched_size(997.0, bon, "tokens") == 17
    assert matched_size(960.0, bon, "tokens") == 16
    assert matched_size(10.0, bon, "tokens") == 1
    assert matched_size(1021.0, bon, "tokens") is None


def test_the_paired_table_names_the_matched_best_of_n_on_each_axis():
    pair = {"judge_delta": 0.01, "judge_delta_ci": [-0.01, 0.03], "win_tie": 0.55, "win_tie_ci": [0.5, 0.6]}
    spi = {"method": "spi-1", "paired": [{"bon": 16, **pair}, {"bon": 17, **pair}]}
    data = {"spi": [{**spi, "matched": {"generated_tokens": 17, "forward_tokens": None}}]}
    matched = paired_table(data, matched_only=True).splitlines()[2:]
    assert matched == [
        "| spi-1 | bon-17 (generated tokens) | +0.0100 [-0.0100, +0.0300] | 55.0% [50.0%, 60.0%] |",
        "| spi-1 | none: all cost less in forward tokens | — | — |",
    ]
    both = {**spi, "matched": {"generated_tokens": 16, "forward_tokens": 16}}
    assert "| spi-1 | bon-16 (generated tokens and forward tokens) |" in paired_table(
        {"spi": [both]}, matched_only=True
    )
    every = paired_table(data).splitlines()[2:]
    assert [row.split(" | ")[1] for row in every] == ["bon-16", "bon-17"]


def test_sizes_added_beside_a_labelled_one_go_unlabelled_on_the_log_axis():
    # 17 and 18 lie 0.09 and 0.17 octaves right of 16; 24 lies 0.58 right of it
    assert labelled_points([1, 2, 16, 17, 18, 24, 32, 64]) == [0, 1, 2, 5, 6, 7]
    # the gap is counted from the last labelled point, not the last point: 16, 18, 20 keeps 20 (0.32 past 16)
    assert labelled_points([16, 18, 20]) == [0, 2]


def test_spi_method_names_are_written_and_read_by_one_helper():
    assert spi_name(3) == "spi-3"
    assert spi_name(2, (4, 2, 16)) == "spi-2-w4k2l16"
    assert parse_spi_name("spi-2-w4k2l16") == (2, (4, 2, 16))
    assert parse_spi_name("spi-12") == (12, None)
    assert parse_spi_name("bon-16") is None
    assert parse_spi_name("spi-2-w4k2") is None
    assert parse_spi_name("spi-anchored") is None
    for name in ("spi-1", "spi-3-w2k2l16"):
        k, budget = parse_spi_name(name) or (0, None)
        assert spi_name(k, budget) == name
    assert spi_rounds(["spi-10", "bon-16", "spi-2-w2k2l16", "spi-2", "sample"]) == [(2, "spi-2"), (10, "spi-10")]


def test_pairing_refuses_scores_of_other_prompts():
    bon = [{"size": 1, "judge_by_prompt": [0.5, 0.5]}]
    with pytest.raises(SpiError, match="same eval prompts"):
        paired_with_best_of_n([0.4, 0.6, 0.7], [[1.0], [2.0]], [[0.5], [0.5]], bon)
    (row,) = paired_with_best_of_n([0.4, 0.6], [[1.0], [2.0]], [[0.5], [0.5]], bon)
    assert (row["bon"], row["judge_delta"], row["win_tie"]) == (1, pytest.approx(0.0), pytest.approx(0.5))


def test_the_estimator_refuses_n_above_the_samples():
    with pytest.raises(ValueError, match="best-of-5"):
        best_of_n_estimate([1.0, 2.0], [1.0, 2.0], 5)


def test_break_even_against_the_cheapest_best_of_n_that_scores_as_high():
    bon = [(1, 0.30, 50.0), (16, 0.60, 500.0), (4, 0.50, 150.0)]
    # matched with BoN-4 (the smallest N whose mean is >= 0.5, not BoN-16); 100 + 1000 / Q <= 150 from Q = 20 on
    found = break_even(0.5, search=100.0, training=1000.0, bon=bon)
    assert (found.status, found.size, found.queries) == ("reached", 4, 20)
    assert per_query(100.0, 1000.0, 20) == 150.0 and per_query(100.0, 1000.0, 19) > 150.0
    assert break_even(0.5, 100.0, 1001.0, bon).queries == 21  # rounded up: at 20 queries SPI still costs more
    assert break_even(0.5, 100.0, 0.0, bon).queries == 1
    assert break_even(0.55, 100.0, 1000.0, bon).size == 16  # BoN-4 no longer matches: 1000 / 400 -> 3 queries
    assert break_even(0.55, 100.0, 1000.0, bon).queries == 3
    never = break_even(0.5, search=150.0, training=10.0, bon=bon)
    assert (never.status, never.size, never.queries) == ("never", 4, None)
    assert never.describe() == "never (BoN-4)"
    missed = break_even(0.61, 100.0, 1000.0, bon)
    assert (missed.status, missed.size, missed.describe()) == ("not reached", None, "not reached")
    assert found.describe() == "20 queries (BoN-4)"


def test_a_sweep_cell_that_shares_round_0_also_gets_what_its_fits_cost(tmp_path):
    # the frontier counts the reward model's and V_k's fits as training: a cell copying them copies their costs too
    spec_path = tmp_path / "spec.yaml"
    config = {"spi": {"tree": [], "value": "heads", "rounds": 2}}
    grid = {"spi.chunk": [4, 8], "baselines.dpo": [False, True]}
    written = {"dir": str(tmp_path / "sweeps"), "config": config, "grid": grid}
    spec_path.write_text(yaml.safe_dump(written, sort_keys=False))
    spec, folder = load_spec(spec_path)
    donor, with_dpo, other_chunk, _ = expand(spec, folder)
    assert round0_key(donor.config) == round0_key(other_chunk.config)
    donor.path.mkdir(parents=True)
    (donor.path / "config.yaml").write_text(to_yaml(donor.config))
    for k in (0, 1):
        (donor.path / "values" / f"round-{k}").mkdir(parents=True)
        (donor.path / "values" / f"round-{k}.cost.json").write_text('{"cost": {}}')
    (donor.path / "reward_model").mkdir()
    (donor.path / "reward_model.cost.json").write_text('{"cost": {}}')
    copied = share_round0(other_chunk)
    assert {"reward_model.cost.json", "values/round-0.cost.json"} <= set(copied)
    assert "values/round-1.cost.json" not in copied  # round 1 depends on the search (its chunk): not shared
    assert {"values/round-1", "values/round-1.cost.json"} <= set(share_round0(with_dpo))  # only a baseline differs


def write_prompts(path: Path, count: int = 4) -> Path:
    path.write_text("".join(json.dumps({"prompt": f"Question {i}: name a colour."}) + "\n" for i in range(count)))
    return path


FRONTIER_YAML = """\
name: frontier
frontier: {enabled: true, samples: 8, budgets: [[2, 2, 4], [1, 2, 4]], queries: [10, 1000]}
"""


def tiny(tmp_path: Path, model: Path, *extra: str) -> list[str]:
    """`spi run` on the tiny model in seconds, with the frontier (its section in the config file): 8 samples per
    prompt, SPI-1 at two budgets, plain round-0 samples (4 per prompt)."""
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    config = tmp_path / "frontier.yaml"
    config.write_text(FRONTIER_YAML)
    return [
        "run", str(config), f"data.prompts={prompts}", f"policy.model={model}", f"run_dir={tmp_path}",
        f"evaluator={SCORER}", "reward=train", "generation.max_new_tokens=8", "data.batch_size=2", "spi.chunk=4",
        "spi.width=2", "spi.successors=2", "spi.rollouts=4", "spi.rounds=1", *extra,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("frontier.sizes=[1,16]", "best-of-16 needs at least 16 samples (frontier.samples is 8)"),
        ("frontier.budgets=[]", "frontier.budgets: List should have at least 1 item"),
        ("frontier.budgets=[[2,2]]", "frontier.budgets.0: List should have at least 3 items"),
        ("frontier.budgets=[[2,0,4]]", "frontier.budgets.0.1: Input should be greater than 0"),
        ("frontier.rounds=[2]", "frontier.rounds names SPI-2 but only 1 rounds are trained"),
        ("frontier.queries=[]", "frontier.queries: List should have at least 1 item"),
    ],
)
def test_a_bad_frontier_config_is_one_line(capsys, tmp_path, tiny_model_dir, override, message):
    assert main([*tiny(tmp_path, tiny_model_dir), override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "frontier").exists()


def test_spi_run_writes_the_frontier_and_resumes_without_sampling_again(tmp_path, tiny_model_dir, monkeypatch):
    assert main(tiny(tmp_path, tiny_model_dir)) == 0
    run = tmp_path / "frontier"
    data = json.loads((run / "frontier.json").read_text())
    records = [json.loads(line) for line in (run / "eval-bon-8.jsonl").read_text().splitlines()]
    judged = {r["id"]: r["judge"] for r in map(json.loads, (run / "frontier-judge.jsonl").read_text().splitlines())}

    # best-of-N from the 8 samples: N = 1 is every sample's mean, N = 8 the judge of the reward's argmax
    assert [b["size"] for b in data["bon"]] == [1, 2, 4, 8]
    means = [np.mean(judged[r["id"]]) for r in records]
    assert data["bon"][0]["judge_by_prompt"] == pytest.approx(means)
    argmax = []
    for r in records:
        rewards = [c["score"] for c in r["candidates"]]
        best = [s for s, x in zip(judged[r["id"]], rewards, strict=True) if x == max(rewards)]
        argmax.append(np.mean(best))
    assert data["bon"][-1]["judge_by_prompt"] == pytest.approx(argmax)
    assert data["bon"][-1]["judge_mean"] == pytest.approx(np.mean(argmax))
    lo, hi = data["bon"][-1]["judge_ci"]
    assert lo <= data["bon"][-1]["judge_mean"] <= hi
    cost = json.loads((run / "eval-bon-8.cost.json").read_text())["cost"]
    assert data["bon"][1]["generated_tokens"] == pytest.approx(cost["tokens_generated"] / 4 * 2 / 8)
    prefill = cost["forward_tokens"]["policy_prefill"] / 4
    rest = (cost["total_forward_tokens"] / 4 - prefill) / 8
    assert data["bon"][2]["forward_tokens"] == pytest.approx(prefill + 4 * rest)

    # SPI at both budgets, the run's own W, K, L as its plain spi-1, evaluated with the other methods
    results = json.loads((run / "results.json").read_text())["results"]
    assert [s["method"] for s in data["spi"]] == ["spi-1", "spi-1-w1k2l4"]
    assert {"spi-1", "spi-1-w1k2l4"} <= set(results)
    small = next(s for s in data["spi"] if s["budget"] == [1, 2, 4])
    assert small["judge_mean"] == pytest.approx(np.mean(results["spi-1-w1k2l4"]["evaluator"]))
    assert small["generated_tokens"] == results["spi-1-w1k2l4"]["cost"]["tokens_generated"] / 4

    # training: round 0's rollouts, its prefix states (a teacher-forced pass over prompt + response of each of the 4
    # rollouts per prompt), the reward model's and V_0's fits, all recorded by the run
    training = small["training"]
    assert set(training["parts"]) == {"rollouts-0", "prefix states", "reward model fit", "V_0 fit"}
    assert training["not_recorded"] == []
    rollouts = json.loads((run / "rollouts-0.cost.json").read_text())["cost"]
    states = training["parts"]["prefix states"]["forward_tokens"]
    assert states["policy_prefill"] == 4 * rollouts["forward_tokens"]["policy_prefill"] + rollouts["tokens_generated"]
    assert training["generated_tokens"] == rollouts["tokens_generated"]
    assert training["forward_tokens"] == sum(p["total_forward_tokens"] for p in training["parts"].values())
    per_query = small["per_query"]["10"]["forward_tokens"]
    assert per_query == pytest.approx(small["forward_tokens"] + training["forward_tokens"] / 10)
    for key in ("generated_tokens", "forward_tokens"):
        assert small["break_even"][key]["status"] in ("reached", "never", "not reached")

    # paired with every BoN-N on the same prompts: N = n is the reward's argmax sample, N = 1 any sample
    ours = results["spi-1-w1k2l4"]["evaluator"]
    paired = {p["bon"]: p for p in small["paired"]}
    assert sorted(paired) == [1, 2, 4, 8]
    assert paired[8]["judge_delta"] == pytest.approx(np.mean(ours) - np.mean(argmax))
    against_argmax = []
    for o, r in zip(ours, records, strict=True):
        rewards = [c["score"] for c in r["candidates"]]
        best = [j for j, x in zip(judged[r["id"]], rewards, strict=True) if x == max(rewards)]
        against_argmax.append(np.mean([outcome(o, j) for j in best]))
    assert paired[8]["win_tie"] == pytest.approx(np.mean(against_argmax))
    against_any = [np.mean([outcome(o, j) for j in judged[r["id"]]]) for o, r in zip(ours, records, strict=True)]
    assert paired[1]["win_tie"] == pytest.approx(np.mean(against_any))
    lo, hi = paired[1]["win_tie_ci"]
    assert 0.0 <= lo <= paired[1]["win_tie"] <= hi <= 1.0
    costlier = [b["size"] for b in data["bon"] if b["generated_tokens"] >= small["generated_tokens"]]
    assert small["matched"]["generated_tokens"] == min(costlier, default=None)

    report = (run / "report.md").read_text()
    assert "## Compute frontier" in report and "| bon-8 |" in report and "| spi-1-w1k2l4 | 1, 2, 4 |" in report
    assert "win+½tie vs a best-of-N draw" in report and "| spi-1-w1k2l4 | " in report
    assert (run / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # resume: a torn judge file is completed, and nothing is sampled again
    samples, judge = (run / "eval-bon-8.jsonl").read_bytes(), (run / "frontier-judge.jsonl").read_bytes()
    lines = judge.splitlines(keepends=True)
    (run / "frontier-judge.jsonl").write_bytes(lines[0] + lines[1][:10])
    (run / "frontier.json").unlink()

    def no_sampling(*args, **kwargs):
        raise AssertionError("the resumed run sampled again")

    monkeypatch.setattr("spi_align.policy.hf.HFPolicy.start", no_sampling)
    assert main(tiny(tmp_path, tiny_model_dir)) == 0
    assert (run / "eval-bon-8.jsonl").read_bytes() == samples
    assert (run / "frontier-judge.jsonl").read_bytes() == judge
    assert json.loads((run / "frontier.json").read_text()) == data
