"""Scorers: sentiment sign, reference similarity, the reward model (tiny random backbone), user callables."""

from __future__ import annotations

import pytest
import torch

from conftest import make_tiny_backbone
from spi_align.core.errors import SpiError
from spi_align.core.interfaces import Scorer
from spi_align.core.records import Cost, Prompt
from spi_align.scoring import make_scorer
from spi_align.scoring.callable import CallableScorer
from spi_align.scoring.reward_model import SPEC_FILE, RewardModel, RewardModelScorer

P = Prompt("0", "What is the capital of France?", "The capital of France is Paris.")
PROMPTS = [P, Prompt("1", "Say hi.", "Hi!"), Prompt("2", "Write a long poem about the sea at night, please.")]
RESPONSES = ["Paris.", "Hello there, how are you doing today? I hope well.", "Waves"]


def test_sentiment_sign():
    scorer = make_scorer("sentiment")
    assert isinstance(scorer, Scorer)
    good, bad, flat = scorer.score([P] * 3, ["I love this, it is wonderful!", "This is awful and I hate it.", "A"])
    assert good > 0.5 and bad < -0.5 and flat == 0.0


@pytest.fixture(scope="module")
def similarity():
    return make_scorer("similarity")


def test_similarity_identical_text_scores_one_and_beats_unrelated(similarity):
    same, related, unrelated = similarity.score(
        [P] * 3, [P.reference, "Paris is the capital city of France.", "I enjoy baking sourdough bread."]
    )
    assert same == pytest.approx(1.0, abs=1e-4)
    assert same > related > unrelated


def test_similarity_needs_references(similarity):
    with pytest.raises(SpiError, match="prompt 'x' has none"):
        similarity.score([Prompt("x", "no reference")], ["text"])


def test_similarity_of_nothing_is_nothing(similarity):
    assert similarity.score([], []) == []


def test_the_sentence_encoder_bills_its_tokens_and_a_lexicon_none(similarity):
    prompts, responses = [P, P, PROMPTS[1]], ["Paris.", "Lyon, I think.", "Hello!"]
    texts = [P.reference, PROMPTS[1].reference, *responses]  # each reference is encoded once
    expected = sum(len(ids) for ids in similarity._encoder.tokenizer(texts)["input_ids"])
    cost = Cost()
    with cost.timer("reward"):
        similarity.score(prompts, responses)
        make_scorer("sentiment").score(prompts, responses)
    assert cost.forward_tokens == {"reward": expected}
    similarity.score(prompts, responses)  # outside a search's timer nothing is billed
    assert cost.forward_tokens == {"reward": expected}


@pytest.fixture
def reward_model(smol_tokenizer) -> RewardModel:
    torch.manual_seed(0)
    return RewardModel(make_tiny_backbone(smol_tokenizer), smol_tokenizer, source="tiny", max_length=128).eval()


def test_reward_model_forward_is_one_fp32_reward_per_row_and_trainable(reward_model):
    batch = reward_model.tokenize([reward_model.format(p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)])
    rewards = reward_model(batch["input_ids"], batch["attention_mask"])
    assert rewards.shape == (3,) and rewards.dtype == torch.float32
    (rewards[0] - rewards[1]).sigmoid().log().neg().backward()  # a Bradley–Terry loss
    assert reward_model.head.weight.grad is not None
    assert next(reward_model.backbone.parameters()).grad is not None


def test_reward_model_formats_with_the_chat_template(reward_model):
    text = reward_model.format(Prompt("p", "Say hi."), "Hi!")
    assert text.startswith("<|im_start|>") and "<|im_start|>assistant\nHi!<|im_end|>" in text


def test_padding_side_and_batch_size_do_not_change_rewards(reward_model):
    scores = {}
    for side in ("left", "right"):
        for batch_size in (1, 3):
            reward_model.tokenizer.padding_side = side
            scores[side, batch_size] = RewardModelScorer(reward_model, batch_size=batch_size).score(PROMPTS, RESPONSES)
    first = torch.tensor(scores["right", 1])
    for value in scores.values():
        torch.testing.assert_close(torch.tensor(value), first, atol=1e-5, rtol=1e-5)
    assert len(set(scores["right", 1])) == 3


def test_save_load_round_trip_gives_identical_scores(reward_model, tmp_path):
    before = RewardModelScorer(reward_model).score(PROMPTS, RESPONSES)
    reward_model.save(tmp_path / "rm")
    assert (tmp_path / "rm" / "model.safetensors").is_file() and (tmp_path / "rm" / SPEC_FILE).is_file()
    scorer = make_scorer(str(tmp_path / "rm"))
    assert isinstance(scorer, RewardModelScorer) and isinstance(scorer, Scorer)
    assert scorer.score(PROMPTS, RESPONSES) == before
    assert scorer.model.max_length == 128 and scorer.model.source == "tiny"


def test_saved_without_backbone_reloads_from_its_source_or_a_given_backbone(reward_model, tmp_path):
    before = RewardModelScorer(reward_model).score(PROMPTS, RESPONSES)
    reward_model.backbone.save_pretrained(tmp_path / "backbone")
    reward_model.source = str(tmp_path / "backbone")
    reward_model.save(tmp_path / "rm", with_backbone=False)
    assert not (tmp_path / "rm" / "model.safetensors").exists()
    assert make_scorer(str(tmp_path / "rm")).score(PROMPTS, RESPONSES) == before
    shared = RewardModel.load(tmp_path / "rm", backbone=reward_model.backbone)
    assert shared.backbone is reward_model.backbone
    assert RewardModelScorer(shared).score(PROMPTS, RESPONSES) == before


def test_features_are_the_last_real_tokens_state(reward_model):
    reward_model.tokenizer.padding_side = "left"
    batch = reward_model.tokenize(["one two three", "one"])
    feats = reward_model.features(**batch)
    alone = reward_model.backbone(**reward_model.tokenize(["one"])).last_hidden_state[0, -1]
    assert feats.shape == (2, 32)
    torch.testing.assert_close(feats[1], alone, atol=1e-5, rtol=1e-5)


def test_a_directory_without_spec_is_not_a_reward_model(tmp_path):
    with pytest.raises(SpiError, match=f"no {SPEC_FILE}"):
        make_scorer(str(tmp_path))


def test_unknown_scorer_lists_the_choices():
    with pytest.raises(SpiError, match="unknown scorer 'nope': use 'similarity', 'sentiment'"):
        make_scorer("nope")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def length(prompts, responses):\n    return [len(r) for r in responses]\n"
        "def short(prompts, responses):\n    return [1.0]\n"
        "def words(prompts, responses):\n    return ['a' for r in responses]\n"
        "NOT_CALLABLE = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path / "my_rewards.py"


def test_callable_scorer(user_module):
    scorer = make_scorer("my_rewards:length")
    assert isinstance(scorer, CallableScorer) and scorer.score([P, P], ["ab", "abcd"]) == [2.0, 4.0]
    by_path = make_scorer(f"{user_module}:length")
    assert by_path.score([P], ["abc"]) == [3.0]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'"),
        ("my_rewards:missing", "has no 'missing'"),
        ("my_rewards:NOT_CALLABLE", "is not callable"),
        ("/no/such/file.py:f", "file not found"),
        (":f", "not of the form"),
    ],
)
def test_callable_scorer_errors_on_making(user_module, spec, message):
    with pytest.raises(SpiError, match=message):
        make_scorer(spec)


@pytest.mark.parametrize(
    ("spec", "message"), [("my_rewards:short", "returned 1 scores for 2"), ("my_rewards:words", "list of numbers")]
)
def test_callable_scorer_errors_on_scoring(user_module, spec, message):
    with pytest.raises(SpiError, match=message):
        make_scorer(spec).score([P, P], ["a", "b"])
