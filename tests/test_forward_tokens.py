"""Forward tokens in `Cost`: every model's forwards counted by component, padding-free, and checked against what
the transformers' forwards really received (a hook on each backbone), so "equal compute" is measured, not assumed."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from conftest import make_policy, make_tiny_backbone, make_tiny_causal_lm
from spi_align.config import Config
from spi_align.core.records import FORWARD_COMPONENTS, Cost, billed
from spi_align.experiment.report import results_table
from spi_align.experiment.sweep_report import cell_rows, render_table
from spi_align.scoring.implicit import ImplicitReward
from spi_align.scoring.reward_model import RewardModel, RewardModelScorer
from spi_align.search.beam import ChunkBeamSearch
from spi_align.search.w2s import WeakToStrongSearch
from spi_align.values.guide import ValueModelGuide
from spi_align.values.model import ValueModel
from spi_align.values.reward_guide import RowPartialReward, TextPartialReward, weighted_sum
from test_row_reward import PROMPTS, setup


@contextmanager
def fed_tokens(**modules: torch.nn.Module) -> Iterator[dict[str, int]]:
    """Per named backbone, the new tokens its forwards received that the attention mask keeps (what a forward
    computes for real), counted by a hook on the module itself, independently of `Cost`."""
    seen = dict.fromkeys(modules, 0)
    handles = []
    for name, module in modules.items():

        def hook(module, args, kwargs, name=name):
            new = kwargs["input_ids"].shape[1]
            seen[name] += int(kwargs["attention_mask"][:, -new:].sum())

        handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


def test_prefill_counts_each_prompt_token_once_and_decode_rows_times_steps(tiny_causal_lm, smol_tokenizer):
    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=12)
    policy.eos_ids = torch.tensor([-1])  # no row ever ends: every step feeds every row
    templated = [
        smol_tokenizer.apply_chat_template(
            [{"role": "user", "content": p.text}], tokenize=False, add_generation_prompt=True
        )
        for p in PROMPTS
    ]
    lengths = [len(smol_tokenizer(text, add_special_tokens=False)["input_ids"]) for text in templated]
    assert len(set(lengths)) > 1  # the batch is padded: padding must not count
    cost = Cost()
    rows = policy.start(PROMPTS, cost)
    assert cost.forward_tokens == {"policy_prefill": sum(lengths)}
    rows = policy.extend(rows.select(torch.tensor([0, 0, 0, 1, 1, 1])), 4, cost)  # 6 rows × 4 steps
    assert cost.forward_tokens["policy_decode"] == 6 * 4
    policy.extend(rows, 3, cost)
    assert cost.forward_tokens["policy_decode"] == 6 * 7 == cost.tokens_generated
    assert cost.total_forward_tokens == sum(lengths) + 42


def test_rows_that_ended_stop_counting(tiny_causal_lm, smol_tokenizer):
    policy, _, _ = setup(tiny_causal_lm, smol_tokenizer, max_new_tokens=12, end_rate=0.2)
    cost = Cost()
    rows = policy.start(PROMPTS, cost).select(torch.arange(2).repeat_interleave(4))
    policy.extend(rows, 12, cost)
    assert rows.done.any() and int(rows.length.sum()) < 8 * 12
    assert cost.forward_tokens["policy_decode"] == int(rows.length.sum()) == cost.tokens_generated


def value_model(tokenizer) -> ValueModel:
    model = ValueModel(make_tiny_backbone(tokenizer, seed=3), tokenizer)
    torch.nn.init.normal_(model.head.weight, std=1.0)
    return model.eval()


def text_reward(tokenizer) -> RewardModelScorer:
    model = RewardModel(make_tiny_backbone(tokenizer, seed=4), tokenizer)
    torch.nn.init.normal_(model.head.weight, std=1.0)
    return RewardModelScorer(model.eval(), batch_size=3)


def test_a_search_total_is_the_sum_of_what_every_model_ran(tiny_causal_lm, smol_tokenizer):
    """Value model (own KV cache), a text reward on partial responses and on the finished pool: each component
    equals what its backbone's forwards received, and the total is their sum."""
    policy, _, _ = setup(tiny_causal_lm, smol_tokenizer, max_new_tokens=9, end_rate=0.1)
    values, reward = value_model(smol_tokenizer), text_reward(smol_tokenizer)
    guide = weighted_sum(
        [(1.0, ValueModelGuide([values], [1.0], smol_tokenizer)), (0.5, TextPartialReward(reward, policy))]
    )
    search = ChunkBeamSearch(policy, guide, reward, width=2, successors=2, chunk=3)
    cost = Cost()
    with fed_tokens(policy=policy.backbone, value=values.backbone, reward=reward.model.backbone) as seen:
        search.run(PROMPTS, cost)
    parts = cost.forward_tokens
    assert set(parts) == {"policy_prefill", "policy_decode", "value", "reward"}
    assert parts["policy_prefill"] + parts["policy_decode"] == seen["policy"]
    assert parts["value"] == seen["value"] > 0
    assert parts["reward"] == seen["reward"] > 0
    assert cost.total_forward_tokens == sum(seen.values()) == sum(parts.values())
    assert cost.to_dict()["total_forward_tokens"] == cost.total_forward_tokens


def test_end_token_peeks_are_counted_beside_the_policy(tiny_causal_lm, smol_tokenizer):
    """A reward head on the policy's states: the peeks of partial responses (guidance) and the end token of rows
    cut at max_new_tokens (picking) are policy forwards of their own component."""
    policy, _, reward = setup(tiny_causal_lm, smol_tokenizer, max_new_tokens=9, end_rate=0.1)
    search = ChunkBeamSearch(policy, RowPartialReward(reward), reward, width=2, successors=2, chunk=3)
    cost = Cost()
    with fed_tokens(policy=policy.backbone) as seen:
        search.run(PROMPTS, cost)
    parts = cost.forward_tokens
    assert parts["peek"] > 0 and "reward" not in parts  # the head reads the rows: no text is re-encoded
    assert parts["policy_prefill"] + parts["policy_decode"] + parts["peek"] == seen["policy"]
    assert cost.total_forward_tokens == seen["policy"]


def test_the_implicit_reward_pair_bills_both_models_as_reward(tiny_causal_lm, smol_tokenizer):
    """Weak-to-strong search: the pair ranks partial responses on its own KV caches and picks among the finished."""
    policy, _, _ = setup(tiny_causal_lm, smol_tokenizer, max_new_tokens=9, end_rate=0.1)
    tuned, reference = make_tiny_causal_lm(smol_tokenizer, seed=1), make_tiny_causal_lm(smol_tokenizer, seed=2)
    search = WeakToStrongSearch(policy, ImplicitReward(tuned, reference, smol_tokenizer), 2, 2, 3)
    cost = Cost()
    with fed_tokens(policy=policy.backbone, tuned=tuned.base_model, reference=reference.base_model) as seen:
        search.run(PROMPTS, cost)
    parts = cost.forward_tokens
    assert parts["reward"] == seen["tuned"] + seen["reference"] and seen["tuned"] == seen["reference"] > 0
    assert parts["policy_prefill"] + parts["policy_decode"] == seen["policy"]
    assert cost.total_forward_tokens == sum(seen.values())


def test_counting_changes_no_sampled_token(tiny_causal_lm, smol_tokenizer, monkeypatch):
    def run() -> list[list[list[int]]]:
        policy, _, _ = setup(tiny_causal_lm, smol_tokenizer, max_new_tokens=9, end_rate=0.1)
        policy.reseed(5)
        reward = text_reward(smol_tokenizer)
        guide = weighted_sum(
            [(1.0, ValueModelGuide([value_model(smol_tokenizer)], [1.0], smol_tokenizer)),
             (0.5, TextPartialReward(reward, policy))]
        )  # fmt: skip
        results = ChunkBeamSearch(policy, guide, reward, width=2, successors=2, chunk=3).run(PROMPTS, Cost())
        return [[c.token_ids for c in r.candidates] + [r.chosen.token_ids] for r in results]

    counted = run()
    monkeypatch.setattr(Cost, "count_forward", lambda self, component, tokens: None)
    for module in ("spi_align.hf.batches", "spi_align.policy.hf"):
        monkeypatch.setattr(f"{module}.billed", lambda: None)
    assert run() == counted


def test_costs_add_save_and_load_forward_tokens_and_old_files_still_load():
    a, b = Cost(tokens_generated=3), Cost(tokens_generated=4)
    a.count_forward("policy_prefill", 10)
    b.count_forward("policy_prefill", 5)
    b.count_forward("reward", 7)
    a.add(b)
    assert a.forward_tokens == {"policy_prefill": 15, "reward": 7} and a.total_forward_tokens == 22
    again = Cost.from_dict(a.to_dict())
    assert again.forward_tokens == a.forward_tokens and again.tokens_generated == 7
    old = {"tokens_generated": 5, "policy_forwards": 2, "value_calls": 0, "reward_calls": 1, "seconds": {"decode": 1.0}}
    loaded = Cost.from_dict({**old, "total_seconds": 1.0})
    assert loaded.forward_tokens == {} and loaded.tokens_generated == 5 and loaded.total_seconds == 1.0
    with pytest.raises(ValueError, match="unknown forward component"):
        a.count_forward("values", 1)
    assert set(FORWARD_COMPONENTS) >= set(a.forward_tokens)


def test_models_bill_the_cost_being_timed_only():
    outer, inner = Cost(), Cost()
    assert billed() is None
    with outer.timer("value"):
        assert billed() is outer
        with inner.timer("reward"):
            assert billed() is inner
        assert billed() is outer
    assert billed() is None


def test_report_tables_show_forward_tokens_beside_tokens():
    new = {"tokens_generated": 10, "total_seconds": 2.0, "total_forward_tokens": 123}
    old = {"tokens_generated": 10, "total_seconds": 2.0}
    headers, rows = results_table({"bon-4": {"evaluator": [1.0], "reward": [1.0], "cost": old},
                                   "spi-1": {"evaluator": [1.0], "reward": [1.0], "cost": new}}, "bon-4")  # fmt: skip
    column = headers.index("forward tokens")
    assert headers[column - 1] == "tokens"
    assert [row[column] for row in rows] == ["n/a", 123]

    def result(score: float, tokens: int, forward: int) -> dict:
        cost = {"tokens_generated": tokens, "total_forward_tokens": forward}
        return {"evaluator": [score, 0.5], "reward": [1, 1], "cost": cost}

    cfg = Config.model_validate({"spi": {"train_prompts": 4, "rollouts": 2}})
    results = {"bon-4": result(0.5, 100, 1000), "spi-1": result(0.9, 90, 1500)}
    (row,) = cell_rows({"spi.chunk": 4}, cfg, results, "bon-4")
    assert row["forward_tokens"] == 1500 and row["forward_tokens_vs_baseline"] == pytest.approx(1.5)
    table = render_table([row], ["spi.chunk"], "bon-4", "t")
    assert "| tokens vs baseline | forward tokens vs baseline |" in table and "| 0.90× | 1.50× |" in table
