"""A reward model tuned on the policy's top layer, run on the policy's own lower layer (`scoring/top_layers.py`): its
rewards at every end-token peek and of every finished row of a real beam search equal the classifier run whole on
the same tokens; every token goes through the tuned layer once (billed as N/L of a forward), and the policy's
backbone runs only its own prefill, decode and peek."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from spi_align.config import Config, GenerationConfig, build_config
from spi_align.core.records import Cost, Prompt
from spi_align.hf.side_cache import TAPPED, TappedStates
from spi_align.policy import HFPolicy
from spi_align.scoring.classifier import ClassifierReward
from spi_align.scoring.reward_model import reading_pad_id, save_trained_reward
from spi_align.scoring.top_layers import TopLayersPartialReward, TopLayersReward
from spi_align.search.beam import ChunkBeamSearch
from spi_align.spi import load_reward
from spi_align.values.reward_guide import partial_reward_value
from test_row_reward import setup as policy_ending_at_random

PROMPTS = [Prompt("a", "Name three colours."), Prompt("b", "Write a poem about the sea.")]
END = 2  # SmolLM2's <|im_end|>, the policy's end of turn


def tuned_run(run: Path, policy_dir: Path, tokenizer, layers: int | None = 1) -> Path:
    """A run folder holding what `reward: train` with reward_model.layers=1 writes: the policy's weights as a
    classifier whose top layer and final norm moved (as tuning moves them) and a random score layer, the tokenizer
    padding with the reading pad, and `reward_model.json` recording the tuned layers."""
    pad = reading_pad_id(tokenizer)
    model = AutoModelForSequenceClassification.from_pretrained(
        policy_dir, num_labels=1, pad_token_id=pad, dtype=torch.float32
    )
    torch.manual_seed(1)
    with torch.no_grad():
        for p in [*model.model.layers[1].parameters(), *model.model.norm.parameters()]:
            p.mul_(1 + 0.5 * torch.randn_like(p)).add_(0.02 * torch.randn_like(p))
        model.score.weight.normal_(0.0, 1.0)
    model.save_pretrained(run / "reward_model")
    tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad)
    tokenizer.save_pretrained(run / "reward_model")
    (run / "reward_model.json").write_text(json.dumps({} if layers is None else {"layers": layers}))
    return run


def tiny_policy_of(policy_dir: Path, tokenizer, max_new_tokens: int = 12, end_rate: float = 0.1) -> HFPolicy:
    """The tiny policy, its rows ending at random (`end_rate` per token) so that some end mid-search."""
    model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
    return policy_ending_at_random(model, tokenizer, max_new_tokens, end_rate)[0]


def reward_cfg() -> Config:
    return build_config(Config, None, ["reward=train", "reward_model.layers=1"])


@pytest.fixture
def setup(tmp_path, tiny_model_dir, smol_tokenizer):
    """(policy, the tuned reward on its layers, the same folder loaded whole)."""
    run = tuned_run(tmp_path / "run", tiny_model_dir, smol_tokenizer)
    policy = tiny_policy_of(tiny_model_dir, smol_tokenizer)
    reward = load_reward(reward_cfg(), run, policy)
    whole = ClassifierReward.load(str(run / "reward_model"))
    return policy, reward, whole


def whole_scores(whole: ClassifierReward, policy, prompts, seen) -> list[float]:
    """The classifier run whole on prompt + response tokens, closed with the end token unless the row ended itself."""
    prompt_ids = policy.prompt_ids(prompts)
    return whole.score_ids([[*prompt_ids[p], *tokens, *([] if done else [END])] for p, tokens, done in seen])


def test_the_tuned_reward_is_run_on_the_policys_layers(setup):
    policy, reward, _ = setup
    assert isinstance(reward, TopLayersReward) and reward.reads_rows
    assert reward.top.layers == 1 and reward.top.total_layers == 2 and policy.tap is reward.tap
    assert policy.tap.index == 1  # the tuned layer's input: the output of the policy's layer 0
    assert isinstance(partial_reward_value(reward, policy), TopLayersPartialReward)


def test_every_peek_and_every_finished_row_of_a_beam_search_equal_the_classifier_whole(setup):
    policy, reward, whole = setup
    partial = partial_reward_value(reward, policy)
    peeks = []

    def guide(rows):
        values = partial(rows)
        seen = zip(rows.prompt_index.tolist(), rows.token_lists(), rows.done.tolist(), strict=True)
        peeks.append((list(seen), values.tolist()))
        return values

    results = ChunkBeamSearch(policy, guide, reward, width=2, successors=2, chunk=3).run(PROMPTS, Cost())
    assert len(peeks) >= 3  # several chunks, each peeked once
    for seen, values in peeks:
        torch.testing.assert_close(
            torch.tensor(values), torch.tensor(whole_scores(whole, policy, PROMPTS, seen)), atol=1e-4, rtol=1e-4
        )
    pool = [(i, c) for i, r in enumerate(results) for c in r.candidates]
    assert any(c.finished for _, c in pool) and not all(c.finished for _, c in pool)  # both ways of ending
    expected = whole_scores(whole, policy, PROMPTS, [(i, c.token_ids, c.finished) for i, c in pool])
    torch.testing.assert_close(torch.tensor([c.score for _, c in pool]), torch.tensor(expected), atol=1e-4, rtol=1e-4)


def test_each_token_goes_through_the_tuned_layer_once_and_the_policy_runs_its_own_forwards_only(setup):
    policy, reward, whole = setup
    policy_fed, text_calls = [], []

    def count(_module, _args, kwargs, _out):  # the real tokens each forward of the policy's backbone computed
        policy_fed.append(int(kwargs["attention_mask"][:, -kwargs["input_ids"].shape[1] :].sum()))

    policy.backbone.register_forward_hook(count, with_kwargs=True)
    reward.model.register_forward_hook(lambda *_: text_calls.append(1))
    cost = Cost()
    ChunkBeamSearch(policy, partial_reward_value(reward, policy), reward, width=2, successors=2, chunk=3).run(
        PROMPTS, cost
    )
    own = cost.forward_tokens["policy_prefill"] + cost.forward_tokens["policy_decode"] + cost.forward_tokens["peek"]
    # the policy's backbone ran its prefill, decode steps and end-token feeds, nothing else (no text scored)
    assert sum(policy_fed) == own
    assert text_calls == [] and cost.forward_tokens["policy_decode"] == cost.tokens_generated
    # every token the policy fed ran once through the tuned layer: prompts once each, not once per row or chunk
    assert reward.top.tokens == own
    assert cost.forward_tokens["reward"] == own * 1 // 2  # N/L = 1/2 of a forward each
    assert set(cost.forward_tokens) == {"policy_prefill", "policy_decode", "peek", "reward"}

    # the classifier whole re-reads prompt + prefix at every chunk: prefix × steps
    policy.reseed(0)
    again = Cost()
    ChunkBeamSearch(policy, partial_reward_value(whole, policy), whole, width=2, successors=2, chunk=3).run(
        PROMPTS, again
    )
    assert again.forward_tokens["reward"] > 3 * own


def test_texts_score_as_the_classifier_whole_without_the_policys_top_layer(setup):
    policy, reward, whole = setup
    top_calls = []
    policy.backbone.layers[1].register_forward_hook(lambda *_: top_calls.append(1))
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[0]]
    texts = ["Red, green and blue.", "The sea is wide\nand deep.", ""]
    cost = Cost()
    with cost.timer("reward"):
        got = reward.score(prompts, texts)
    torch.testing.assert_close(torch.tensor(got), torch.tensor(whole.score(prompts, texts)), atol=1e-5, rtol=1e-5)
    assert top_calls == []  # stopped below the tuned layer
    assert cost.forward_tokens["reward"] == sum(len(ids) for ids in whole.encode(prompts, texts))


def test_the_tap_changes_no_sampled_token(tiny_model_dir, smol_tokenizer):
    runs = []
    for tap in (False, True):
        policy = tiny_policy_of(tiny_model_dir, smol_tokenizer, end_rate=0.0)
        if tap:
            policy.tap_layer(1)
        rows = policy.sample(PROMPTS, 3, Cost())
        runs.append((rows.token_lists(), rows.hidden))
        assert (TAPPED in rows.extras) is tap
    assert runs[0][0] == runs[1][0]
    torch.testing.assert_close(runs[0][1], runs[1][1])


def test_tapped_blocks_are_left_aligned_per_row_and_follow_a_selection():
    h = torch.arange(12.0).reshape(2, 3, 2)  # rows 0, 1; columns 0..2; states of width 2
    tapped = TappedStates(None, torch.zeros(2, 1, 2), torch.ones(2, 1))
    for k, fed in enumerate(([True, False], [True, True], [False, True])):
        tapped.add(h[:, k : k + 1], torch.tensor(fed))
    tapped.select(torch.tensor([1, 0, 1]))  # row 1, row 0, row 1
    states, real = tapped.take()
    # row 1 fed columns 1 and 2, row 0 columns 0 and 1: each row's own tokens first, in order
    assert real.tolist() == [[True, True], [True, True], [True, True]]
    assert states[:, :, 0].tolist() == [[8.0, 10.0], [0.0, 2.0], [8.0, 10.0]]
    assert tapped.take() is None and tapped.take_prompts()[0].shape == (2, 1, 2)


def test_falls_back_to_the_classifier_whole_when_it_cannot_share(tmp_path, tiny_model_dir, smol_tokenizer):
    from conftest import make_tiny_causal_lm

    run = tuned_run(tmp_path / "run", tiny_model_dir, smol_tokenizer)
    other = HFPolicy(make_tiny_causal_lm(smol_tokenizer, seed=5), smol_tokenizer, GenerationConfig())
    reward = load_reward(reward_cfg(), run, other)  # another model's layers
    assert type(reward) is ClassifierReward and other.tap is None
    policy = tiny_policy_of(tiny_model_dir, smol_tokenizer)
    (run / "reward_model" / "model.safetensors").write_bytes((tiny_model_dir / "model.safetensors").read_bytes())
    assert type(load_reward(reward_cfg(), run, policy)) is ClassifierReward  # nothing tuned: all the policy's


def test_without_a_record_the_tuned_layers_are_found_from_the_weights(tmp_path, tiny_model_dir, smol_tokenizer):
    bare = tuned_run(tmp_path / "bare", tiny_model_dir, smol_tokenizer, layers=None)  # e.g. a saved improved policy
    reward = load_reward(reward_cfg(), bare, tiny_policy_of(tiny_model_dir, smol_tokenizer))
    assert isinstance(reward, TopLayersReward) and reward.top.layers == 1


def test_saving_writes_the_classifier_folder_as_loaded(setup, tmp_path):
    policy, reward, whole = setup
    save_trained_reward(reward, tmp_path / "saved")
    again = ClassifierReward.load(str(tmp_path / "saved"))
    texts = ["Blue.", "Waves."]
    assert again.score(PROMPTS, texts) == whole.score(PROMPTS, texts)


def test_a_tuned_folder_as_reward_runs_on_the_policy_and_guides_the_bench(tmp_path, tiny_model_dir, smol_tokenizer):
    from spi_align.config import BenchConfig
    from spi_align.experiment.bench.methods import TEXT_GUIDED, build_methods
    from spi_align.scoring import make_scorer

    folder = tuned_run(tmp_path / "run", tiny_model_dir, smol_tokenizer) / "reward_model"
    policy = tiny_policy_of(tiny_model_dir, smol_tokenizer)
    reward = make_scorer(str(folder), policy=policy)  # `reward=<folder>`: found to share the policy's lower layer
    assert isinstance(reward, TopLayersReward) and reward.top.layers == 1
    assert type(make_scorer(str(folder))) is ClassifierReward  # no policy given (an evaluator): the classifier whole
    cfg = build_config(BenchConfig, None, ["bench.backends=[hf]"])
    search = build_methods(policy, reward, cfg)[TEXT_GUIDED].__self__
    assert isinstance(search.value, TopLayersPartialReward)  # P1 with the tuned reward guiding
