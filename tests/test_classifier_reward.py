"""Reward models as the field ships them (a transformers sequence classifier, num_labels 1, in a folder): scores
equal the model called directly, whatever the batching and padding; bad input is one line; the policy's token ids
are read when the tokenizers agree; the folder starts a value model; one trained by TRL's `RewardTrainer` works."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from conftest import make_policy, make_tiny_causal_lm, save_tiny_classifier
from spi_align.cli import main
from spi_align.config import SPIConfig
from spi_align.core.errors import SpiError
from spi_align.core.interfaces import Scorer
from spi_align.core.records import Cost, Prompt
from spi_align.scoring import make_scorer
from spi_align.scoring.classifier import ClassifierReward
from spi_align.values.model import ValueModel
from spi_align.values.reward_guide import TextPartialReward, partial_reward_value

PROMPTS = [
    Prompt("a", "Name a colour."),
    Prompt("b", "Write a long poem about the sea at night, please."),
    Prompt("c", "And why?", history=(("user", "Pick a number."), ("assistant", "Seven."))),
]
RESPONSES = ["Blue, like the sky.", "Waves", "Because seven is the number I like best of all of them."]


def conversation(prompt: Prompt, response: str) -> list[dict[str, str]]:
    return [*prompt.messages(), {"role": "assistant", "content": response}]


def direct_scores(folder: Path, prompts=PROMPTS, responses=RESPONSES) -> list[float]:
    """The standard usage, one text at a time: the folder's own tokenizer and model, nothing of ours."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    out = []
    with torch.no_grad():
        for prompt, response in zip(prompts, responses, strict=True):
            if tokenizer.chat_template is not None:
                enc = tokenizer.apply_chat_template(
                    conversation(prompt, response), tokenize=True, return_dict=True, return_tensors="pt"
                )
            else:
                enc = tokenizer("\n\n".join([prompt.text, response]), return_tensors="pt")
            out.append(float(model(**enc).logits[0, 0]))
    return out


def close(got, expected, tol: float = 1e-5) -> None:
    torch.testing.assert_close(got, expected, atol=tol, rtol=tol)


def one_line_error(capsys, argv: list[str], needle: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and needle in err, err
    return err


def test_scores_equal_the_model_called_on_each_text_alone(tiny_classifier_dir):
    reward = make_scorer(str(tiny_classifier_dir))
    assert isinstance(reward, ClassifierReward) and isinstance(reward, Scorer)
    expected = direct_scores(tiny_classifier_dir)
    for batch_size in (1, 2, 3):
        reward.batch_size = batch_size
        close(reward.score(PROMPTS, RESPONSES), expected)
    assert len({round(s, 4) for s in expected}) == 3  # the scores differ: a wrong read position would show
    assert reward.score([], []) == []
    assert reward.name == f"reward_model({tiny_classifier_dir.name})"


def test_forward_tokens_are_billed_padding_free_inside_a_timer(tiny_classifier_dir):
    reward = make_scorer(str(tiny_classifier_dir), dtype="float32")
    reward.batch_size = 2  # padded batches: padding must not count
    cost = Cost()
    with cost.timer("reward"):
        reward.score(PROMPTS, RESPONSES)
    assert cost.forward_tokens == {"reward": sum(len(ids) for ids in reward.encode(PROMPTS, RESPONSES))}
    reward.score(PROMPTS, RESPONSES)  # outside any timer: nothing billed
    assert cost.total_forward_tokens == sum(len(ids) for ids in reward.encode(PROMPTS, RESPONSES))


def test_the_conversation_goes_through_its_chat_template_history_included(tiny_classifier_dir):
    reward = make_scorer(str(tiny_classifier_dir))
    text = reward.render(PROMPTS[2], RESPONSES[2])
    assert text == reward.tokenizer.apply_chat_template(conversation(PROMPTS[2], RESPONSES[2]), tokenize=False)
    assert "Pick a number." in text and "Seven." in text and text.count("<|im_start|>assistant") == 2


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_side_does_not_change_scores_and_a_batch_equals_the_direct_batched_call(tmp_path, smol_tokenizer, side):
    smol_tokenizer.padding_side = side
    folder = save_tiny_classifier(tmp_path / side, smol_tokenizer)
    reward = make_scorer(str(folder))
    scores = reward.score(PROMPTS, RESPONSES)
    close(scores, direct_scores(folder))
    # the same inputs batched by hand with the tokenizer's own padding (the model finds the last non-pad token)
    texts = [reward.render(p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    enc = reward.tokenizer(texts, padding=True, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        batched = reward.model(**enc).logits[:, 0].tolist()
    close(scores, batched)


def test_padding_sides_give_identical_scores(tmp_path, smol_tokenizer):
    scores = {}
    for side in ("left", "right"):
        smol_tokenizer.padding_side = side
        scores[side] = make_scorer(str(save_tiny_classifier(tmp_path / side, smol_tokenizer))).score(PROMPTS, RESPONSES)
    assert scores["left"] == scores["right"]


def test_without_a_chat_template_prompt_and_response_are_joined_by_a_blank_line(tmp_path, smol_tokenizer):
    smol_tokenizer.chat_template = None
    folder = save_tiny_classifier(tmp_path / "plain", smol_tokenizer)
    reward = make_scorer(str(folder))
    assert reward.render(PROMPTS[0], "Blue.") == "Name a colour.\n\nBlue."
    close(reward.score(PROMPTS[:2], RESPONSES[:2]), direct_scores(folder, PROMPTS[:2], RESPONSES[:2]))


def test_dtype_and_device_settings(tiny_classifier_dir):
    half = make_scorer(str(tiny_classifier_dir), device="cpu", dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16
    scores = half.score(PROMPTS, RESPONSES)
    assert all(isinstance(s, float) for s in scores)
    close(scores, direct_scores(tiny_classifier_dir), tol=0.1)
    with pytest.raises(SpiError, match="unknown dtype 'float8'"):
        make_scorer(str(tiny_classifier_dir), dtype="float8")


# --- bad input ---------------------------------------------------------------------------------------------------
def test_a_folder_holding_a_causal_lm_is_refused(tiny_model_dir):
    with pytest.raises(SpiError, match="holds LlamaForCausalLM, not a sequence classifier"):
        make_scorer(str(tiny_model_dir))


def test_more_than_one_label_is_refused(tmp_path, smol_tokenizer):
    folder = save_tiny_classifier(tmp_path / "three", smol_tokenizer, num_labels=3)
    with pytest.raises(SpiError, match="num_labels=3: a reward model gives one score"):
        make_scorer(str(folder))


def test_a_hub_id_with_no_network_is_one_line(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(SpiError, match="cannot load reward model 'no-such-org/no-such-rm'") as info:
        make_scorer("no-such-org/no-such-rm")
    assert "\n" not in str(info.value)


def test_a_folder_that_is_no_model_names_both_formats(tmp_path):
    with pytest.raises(SpiError, match="no config.json .* and no spi_reward.json"):
        make_scorer(str(tmp_path))


def test_no_pad_token_anywhere_is_refused(tmp_path, smol_tokenizer):
    from transformers import AutoConfig

    smol_tokenizer.pad_token = None
    folder = save_tiny_classifier(tmp_path / "nopad", smol_tokenizer)
    config = AutoConfig.from_pretrained(folder)
    config.pad_token_id = None
    config.save_pretrained(folder)
    with pytest.raises(SpiError, match="names no pad token"):
        make_scorer(str(folder))


def test_a_tokenizer_without_pad_token_pads_with_the_configs_and_says_so(tmp_path, smol_tokenizer, caplog):
    smol_tokenizer.pad_token = None
    folder = save_tiny_classifier(tmp_path / "configpad", smol_tokenizer)  # config.pad_token_id = 2
    with caplog.at_level(logging.INFO, logger="spi_align"):
        reward = make_scorer(str(folder))
    assert reward.pad_id == 2 and reward.tokenizer.pad_token == "<|im_end|>"
    assert "its tokenizer has no pad token" in caplog.text
    close(reward.score(PROMPTS, RESPONSES), direct_scores(folder))


def test_spi_score_with_a_classifier_and_its_bad_inputs_exit_2(capsys, tmp_path, tiny_classifier_dir, tiny_model_dir):
    rows = [{"prompt": p.text, "response": r} for p, r in zip(PROMPTS[:2], RESPONSES[:2], strict=True)]
    file = tmp_path / "answers.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scored.jsonl"
    assert main(["score", str(file), "--scorer", str(tiny_classifier_dir), "--out", str(out)]) == 0
    scores = [json.loads(line)["score"] for line in out.read_text().splitlines()]
    close(scores, direct_scores(tiny_classifier_dir, PROMPTS[:2], RESPONSES[:2]))
    one_line_error(capsys, ["score", str(file), "--scorer", str(tiny_model_dir)], "not a sequence classifier")


def test_spi_run_refuses_a_bad_reward_before_sampling_and_the_fixed_command_is_not_refused(
    capsys, tmp_path, tiny_model_dir
):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(2)))
    base = ["run", str(Path(__file__).parents[1] / "configs" / "demo.yaml"), f"data.prompts={prompts}"]
    base += [f"policy.model={tiny_model_dir}", f"run_dir={tmp_path}", "evaluator=sentiment", "name=r"]
    for reward, needle in (("nosuch", "unknown scorer 'nosuch'"), (str(tiny_model_dir), "not a sequence classifier")):
        one_line_error(capsys, [*base, f"reward={reward}"], needle)
        assert not (tmp_path / "r" / "rollouts-0.jsonl").exists()  # nothing was sampled
        assert not any(p.name != "config.yaml" for p in (tmp_path / "r").glob("*"))


# --- the search: partial responses as text, finished rows from the policy's token ids -----------------------------
@pytest.fixture
def reward_and_policy(tiny_classifier_dir, smol_tokenizer):
    policy = make_policy(make_tiny_causal_lm(smol_tokenizer), smol_tokenizer, max_new_tokens=10)
    return make_scorer(str(tiny_classifier_dir), policy=policy), policy


def test_partial_responses_are_scored_as_text(reward_and_policy):
    reward, policy = reward_and_policy
    rows = policy.extend(policy.start(PROMPTS, Cost()).select(torch.tensor([0, 0, 1, 2])), 4, Cost())
    value = partial_reward_value(reward, policy)
    assert isinstance(value, TextPartialReward)
    texts = policy.texts(rows)
    prompts = [PROMPTS[i] for i in rows.prompt_index.tolist()]
    close(value(rows).tolist(), reward.score(prompts, texts))


def test_a_shared_tokenizer_reads_the_policys_token_ids(reward_and_policy):
    reward, policy = reward_and_policy
    assert reward.tail == reward.tokenizer("<|im_end|>\n", add_special_tokens=False)["input_ids"]
    rows = policy.sample(PROMPTS, 2, Cost())
    index = torch.arange(rows.size)
    got = reward.score_rows(rows, index, Cost())
    prompt_ids = policy.prompt_ids(PROMPTS)
    special = set(reward.tokenizer.all_special_ids)  # dropped, as decoding drops them
    seqs = [
        [*prompt_ids[p], *(t for t in tokens if t not in special), *reward.tail]
        for p, tokens in zip(rows.prompt_index.tolist(), rows.token_lists(), strict=True)
    ]
    with torch.no_grad():
        expected = [float(reward.model(input_ids=torch.tensor([s])).logits[0, 0]) for s in seqs]
    close(got, expected)
    # where re-encoding the decoded text gives the same ids, the text path agrees exactly
    texts = policy.texts(rows)
    prompts = [PROMPTS[i] for i in rows.prompt_index.tolist()]
    by_text = reward.score(prompts, texts)
    same = [i for i, s in enumerate(seqs) if reward.encode([prompts[i]], [texts[i]])[0] == s]
    assert same
    close([got[i] for i in same], [by_text[i] for i in same])


def test_another_tokenizer_is_scored_as_text(tiny_classifier_dir, smol_tokenizer):
    smol_tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    policy = make_policy(make_tiny_causal_lm(smol_tokenizer), smol_tokenizer, max_new_tokens=4)
    reward = make_scorer(str(tiny_classifier_dir), policy=policy)
    assert reward.tail is None
    assert reward.score_rows(policy.sample(PROMPTS[:1], 2, Cost()), torch.arange(2), Cost()) is None


# --- a value model that starts from the reward model ---------------------------------------------------------------
def test_the_folder_starts_a_value_model_head_included(tmp_path, tiny_classifier_dir):
    reward = make_scorer(str(tiny_classifier_dir))
    value = ValueModel.from_source(str(tiny_classifier_dir), train_layers=1)
    close(value.head.weight, reward.model.score.weight)
    assert float(value.head.bias.detach()) == 0.0
    # V at the position where the reward model reads (the last token that is not its pad id) is the reward
    for prompt, response, score in zip(PROMPTS, RESPONSES, reward.score(PROMPTS, RESPONSES), strict=True):
        ids = reward.encode([prompt], [response])[0]
        last = max(i for i, t in enumerate(ids) if t != reward.pad_id)
        with torch.no_grad():
            values = value(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))
        assert float(values[0, last]) == pytest.approx(score, abs=1e-5)
    value.save(tmp_path / "v")  # partly trained: rebuilt from the reward model's folder
    loaded = ValueModel.load(tmp_path / "v")
    ids = torch.tensor([reward.encode(PROMPTS[:1], RESPONSES[:1])[0]])
    mask = torch.ones_like(ids)
    close(loaded(ids, mask), value(ids, mask))


def test_spi_value_backbone_set_to_the_reward_model(tiny_classifier_dir, tiny_policy):
    from spi_align.values.model_round import new_value_model

    spi = SPIConfig(value="model", value_backbone=str(tiny_classifier_dir), value_train_layers=0)
    model = new_value_model(spi, tiny_policy, "tiny")
    reward = make_scorer(str(tiny_classifier_dir))
    close(model.head.weight, reward.model.score.weight)


def test_value_backbone_reward_starts_from_the_runs_reward_whatever_its_kind(
    tmp_path, tiny_classifier_dir, tiny_policy
):
    import copy

    from spi_align.scoring.reward_model import RewardModel, RewardModelScorer
    from spi_align.scoring.row_reward import PolicyHeadReward
    from spi_align.values.model_round import from_reward, load_value_model, new_value_model

    spi = SPIConfig(value="model", value_backbone="reward", value_train_layers=0)
    # a transformers classifier: loaded whole from where the reward came from, its score head included
    classifier = make_scorer(str(tiny_classifier_dir))
    model = new_value_model(spi, tiny_policy, "tiny", classifier)
    assert model.source == str(tiny_classifier_dir)
    close(model.head.weight, classifier.model.score.weight)
    # spi's reward head on the policy's own states (reward: train): the policy's backbone with that head
    head_model = RewardModel(tiny_policy.backbone, tiny_policy.tokenizer, source="tiny")
    with torch.no_grad():
        head_model.head.weight.normal_()
        head_model.head.bias.fill_(0.25)
    on_states = PolicyHeadReward(head_model, tiny_policy)
    value = from_reward(on_states, spi, tiny_policy, "tiny")
    assert value.backbone is tiny_policy.backbone  # head only trained: shared, never modified
    close(value.head.weight, head_model.head.weight)
    assert float(value.head.bias.detach()) == pytest.approx(0.25)
    ids = torch.tensor([tiny_policy.prompt_ids(PROMPTS[:1])[0]])
    with torch.no_grad():
        states = tiny_policy.backbone(input_ids=ids).last_hidden_state[0]
        close(value(ids, torch.ones_like(ids))[0], head_model.head(states.float())[:, 0])  # R read at every prefix
    value.save(tmp_path / "v")  # rebuilt on the start it came from: the policy's backbone
    loaded = load_value_model(tmp_path / "v", spi, tiny_policy, "tiny", on_states)
    assert loaded.backbone is tiny_policy.backbone
    close(loaded(ids, torch.ones_like(ids)), value(ids, torch.ones_like(ids)))
    # a reward head on a backbone of its own (here perturbed, as a saved one may differ from its source): a copy of
    # that backbone, the very weights the head was trained with
    own = RewardModel(copy.deepcopy(tiny_policy.backbone), tiny_policy.tokenizer, source="tiny")
    with torch.no_grad():
        next(own.backbone.parameters()).add_(0.5)
        own.head.weight.normal_()
    apart = from_reward(RewardModelScorer(own), spi, tiny_policy, "tiny")
    assert apart.backbone is not own.backbone and apart.backbone is not tiny_policy.backbone
    for mine, theirs in zip(apart.backbone.parameters(), own.backbone.parameters(), strict=True):
        assert torch.equal(mine, theirs)
    close(apart.head.weight, own.head.weight)
    # a reward that scores text has no model to start from: one clear error
    with pytest.raises(SpiError, match="no model it can load"):
        from_reward(make_scorer("sentiment"), spi, tiny_policy, "tiny")
    with pytest.raises(SpiError, match="there is none"):
        from_reward(None, spi, tiny_policy, "tiny")


def test_value_backbone_reward_with_a_text_reward_is_refused_by_the_config(capsys):
    assert main(["demo", "reward=similarity", "spi.value=model", "spi.value_backbone=reward"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "reward 'similarity' scores text" in err[0]


def test_spi_run_starts_each_rounds_value_model_from_the_reward_it_trained(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    from spi_align.scoring.reward_model import HEAD_FILE
    from spi_align.values.model import WEIGHTS_FILE

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: name a colour."}) + "\n" for i in range(6)))
    scorer = str(Path(__file__).parent / "mocks" / "scorers.py") + ":vowel_share"
    argv = [
        "demo", f"data.prompts={prompts}", f"policy.model={tiny_model_dir}", f"run_dir={tmp_path}", "name=vr",
        f"evaluator={scorer}", "reward=train", "generation.max_new_tokens=6", "data.batch_size=3", "spi.chunk=3",
        "spi.width=2", "spi.successors=2", "spi.tree=[]", "spi.rollouts=3", "spi.rounds=2", "spi.value=model",
        "spi.value_backbone=reward", "spi.value_train_layers=0", "spi.value_epochs=1", "spi.value_lr=1e-9",
    ]  # fmt: skip
    assert main(argv) == 0
    run = tmp_path / "vr"
    weight = load_file(run / "reward_model" / HEAD_FILE)["weight"]
    for k in range(2):  # each round starts from the reward head (a learning rate of 1e-9 keeps it there)
        spec = json.loads((run / "values" / f"round-{k}" / "value_model.json").read_text())
        assert spec["backbone_source"] == str(tiny_model_dir.resolve())
        head = load_file(run / "values" / f"round-{k}" / WEIGHTS_FILE)["head.weight"]
        close(head, weight, tol=1e-4)
    results = json.loads((run / "results.json").read_text())["results"]
    assert {"spi-1", "spi-2"} <= set(results)


def test_a_value_model_cannot_start_from_a_multi_label_classifier(tmp_path, smol_tokenizer):
    folder = save_tiny_classifier(tmp_path / "three", smol_tokenizer, num_labels=3)
    with pytest.raises(SpiError, match="num_labels=3"):
        ValueModel.from_source(str(folder))


# --- one written by TRL's RewardTrainer ----------------------------------------------------------------------------
PAIRS = [
    ("Name a colour.", "Blue.", "I will not."),
    ("Say hi.", "Hi there!", "No."),
    ("What is 2 + 2?", "4.", "5."),
    ("Capital of France?", "Paris.", "Rome, I think."),
]


def test_a_reward_model_trained_by_trl_works_as_reward_and_as_a_value_model_start(tmp_path, smol_tokenizer):
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    from conftest import make_tiny_classifier

    data = [
        {"chosen": conversation(Prompt("", q), good), "rejected": conversation(Prompt("", q), bad)}
        for q, good, bad in PAIRS
    ]
    args = RewardConfig(
        output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=2, learning_rate=1e-3,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True, disable_tqdm=True,
    )  # fmt: skip
    trainer = RewardTrainer(
        model=make_tiny_classifier(smol_tokenizer), args=args, processing_class=smol_tokenizer,
        train_dataset=Dataset.from_list(data),
    )  # fmt: skip
    trainer.train()
    folder = tmp_path / "rm"
    trainer.save_model(str(folder))

    reward = make_scorer(str(folder))
    prompts = [Prompt(str(i), q) for i, (q, _, _) in enumerate(PAIRS)]
    chosen = [good for _, good, _ in PAIRS]
    assert reward.encode(prompts[:1], chosen[:1])[0] == list(trainer.train_dataset[0]["chosen_ids"])  # what it saw
    close(reward.score(prompts, chosen), direct_scores(folder, prompts, chosen))
    value = ValueModel.from_source(str(folder))
    close(value.head.weight, reward.model.score.weight)


def test_spi_run_with_the_reward_model_as_reward_evaluator_and_value_start(
    tmp_path, tiny_model_dir, tiny_classifier_dir
):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: name a colour."}) + "\n" for i in range(4)))
    rm = str(tiny_classifier_dir)
    argv = [
        "run", str(Path(__file__).parents[1] / "configs" / "demo.yaml"), f"data.prompts={prompts}", "name=rm",
        f"policy.model={tiny_model_dir}", f"run_dir={tmp_path}", f"reward={rm}", f"evaluator={rm}",
        "generation.max_new_tokens=8", "data.batch_size=2", "spi.chunk=4", "spi.width=2", "spi.successors=2",
        "spi.tree=[]", "spi.rollouts=2", "spi.rounds=1", "spi.value=model", f"spi.value_backbone={rm}",
        "spi.value_train_layers=0", "spi.value_epochs=1",
    ]  # fmt: skip
    assert main(argv) == 0
    results = json.loads((tmp_path / "rm" / "results.json").read_text())["results"]
    assert set(results) == {"sample", "bon-4", "spi-1"}
    spec = json.loads((tmp_path / "rm" / "values" / "round-0" / "value_model.json").read_text())
    assert spec["backbone_source"] == str(tiny_classifier_dir.resolve())
    for record in map(json.loads, (tmp_path / "rm" / "eval-bon-4.jsonl").read_text().splitlines()):
        scores = [c["score"] for c in record["candidates"]]
        assert None not in scores and record["score"] == max(scores)  # best-of-N picked by the reward model
