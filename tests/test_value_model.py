"""Separate value models: eq. 12 masks, training, save/load, the tokenizer comparison, and incremental (own KV
cache) scoring that must equal scoring from scratch, through row selections and inside the beam search."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_policy, make_tiny_backbone, make_tiny_causal_lm, tiny_llama_config
from mocks.scorers import LengthScorer
from spi_align.cli import main
from spi_align.config import SPIConfig
from spi_align.core.records import Cost, Prompt
from spi_align.hf.tokenizers import same_tokenizer
from spi_align.search.beam import ChunkBeamSearch
from spi_align.values.guide import ValueModelGuide
from spi_align.values.model import WEIGHTS_FILE, ValueModel
from spi_align.values.model_train import dataset_loss, eq12_batch, eq12_loss, response_values, train_value_model
from spi_align.values.train import eq12_targets

PROMPTS = [
    Prompt("a", "Name three colours."),
    Prompt("b", "Write a short poem about the sea, please."),
    Prompt("c", "Hi"),
]


def value_model(tokenizer, seed: int = 1, train_layers: int = -1, backbone=None) -> ValueModel:
    """A tiny value model with a head large enough that values differ visibly (|V| ~ 1–10)."""
    backbone = make_tiny_backbone(tokenizer, seed) if backbone is None else backbone
    model = ValueModel(backbone, tokenizer, train_layers=train_layers)
    torch.manual_seed(seed + 100)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 1.0)
        model.head.bias.fill_(0.5)
    return model.eval()


def from_scratch(models, weights, rows) -> torch.Tensor:
    """Σ w_i V_i of each row, each sequence encoded whole without any cache (the reference)."""
    prompt_ids = [rows.prompt_tokens[p] for p in rows.prompt_index.tolist()]
    responses = rows.token_lists()
    total = torch.zeros(rows.size)
    for model, weight in zip(models, weights, strict=True):
        values = response_values(model, prompt_ids, responses)
        total += weight * torch.stack([v[-1] for v in values])
    return total


# --- eq. 12 ---------------------------------------------------------------------------------------------------
def test_eq12_batch_masks_prompt_and_padding_exactly():
    batch = eq12_batch([[5, 6, 7], [5]], [[8, 9], [8, 9, 10, 11]], torch.tensor([1.0, -1.0]), pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9], [5, 8, 9, 10, 11]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch.loss_mask.tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 1]]
    batch = eq12_batch([[5, 6], [5]], [[8], [8, 9]], torch.tensor([2.0, 0.0]), pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 8], [5, 8, 9]]
    batch = eq12_batch([[5, 6, 7], [5]], [[8], [8]], torch.tensor([2.0, 0.0]), pad_id=0)
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    assert batch.loss_mask.tolist() == [[0, 0, 0, 1], [0, 1, 0, 0]]
    values = torch.tensor([[9.0, 9.0, 9.0, 1.0], [9.0, 3.0, 9.0, 9.0]])
    # response positions only: ((1 - 2)² + (3 - 0)²) / 2
    assert float(eq12_loss(values, batch)) == pytest.approx(5.0)
    changed = values.clone()
    changed[0, :3], changed[1, 0], changed[1, 2:] = -50.0, 77.0, 123.0  # prompt and padding positions
    assert float(eq12_loss(changed, batch)) == pytest.approx(5.0)


def test_short_training_lowers_the_eq12_loss(smol_tokenizer):
    model = value_model(smol_tokenizer, train_layers=-1)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.02)
        model.head.bias.zero_()
    good, bad = (
        smol_tokenizer.encode(" yes", add_special_tokens=False),
        smol_tokenizer.encode(" no", add_special_tokens=False),
    )
    prompt_ids, responses, rewards, groups = [], [], [], []
    for i in range(8):
        prompt = smol_tokenizer.encode(f"Question {i}: do you agree?", add_special_tokens=False)
        for word, reward in ((good, 1.0), (bad, 0.0)):
            prompt_ids.append(prompt)
            responses.append(word * (2 + i % 3))
            rewards.append(reward)
            groups.append(i)
    targets = eq12_targets(rewards, groups, centered=True)
    before = dataset_loss(model, prompt_ids, responses, targets)
    fit = train_value_model(
        model, prompt_ids, responses, rewards, groups, centered=True, epochs=15, lr=1e-3, batch_size=4, seed=0
    )
    after = dataset_loss(model, prompt_ids, responses, targets)
    assert before > 0.2  # centred targets ±0.5 and a near-zero head
    assert after < 0.3 * before, (before, after)
    assert fit["epoch_losses"][-1] < fit["epoch_losses"][0]
    assert not any(p.requires_grad for p in model.parameters())  # back to frozen eval mode


def test_partial_fine_tuning_trains_only_the_head_and_last_layers(smol_tokenizer):
    model = value_model(smol_tokenizer, train_layers=1)
    first_layer = {k: v.clone() for k, v in model.backbone.layers[0].state_dict().items()}
    last_layer = {k: v.clone() for k, v in model.backbone.layers[1].state_dict().items()}
    ids = [smol_tokenizer.encode("Hello there", add_special_tokens=False)] * 4
    train_value_model(model, ids, [[100, 200], [300], [400, 500, 600], [700]], [1.0, 0.0, 2.0, -1.0], [0] * 4)
    for k, v in model.backbone.layers[0].state_dict().items():
        assert torch.equal(v, first_layer[k]), k
    assert any(not torch.equal(v, last_layer[k]) for k, v in model.backbone.layers[1].state_dict().items())
    assert model.trained_names() == [
        *(f"layers.1.{n}" for n, _ in model.backbone.layers[1].named_parameters()),
        "norm.weight",
    ]


# --- save / load ------------------------------------------------------------------------------------------------
@pytest.fixture
def backbone_dir(tmp_path, smol_tokenizer) -> Path:
    path = tmp_path / "tiny-backbone"
    make_tiny_backbone(smol_tokenizer, seed=3).save_pretrained(path)
    smol_tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("layers", [1, -1, 0])
def test_save_load_round_trip(tmp_path, backbone_dir, layers):
    model = ValueModel.from_source(str(backbone_dir), train_layers=layers)
    tok = model.tokenizer
    p_ids = [model.prompt_ids(Prompt("a", "Name a colour.")), model.prompt_ids(Prompt("b", "Say hi"))]
    r_ids = [model.response_ids("Blue, and green."), model.response_ids("Hello!")]
    train_value_model(model, p_ids, r_ids, [1.0, 0.0], ["a", "b"], centered=False, epochs=2, lr=1e-3)
    expected = response_values(model, p_ids, r_ids)
    model.save(tmp_path / "v")
    spec = json.loads((tmp_path / "v" / "value_model.json").read_text())
    saved = load_file(tmp_path / "v" / WEIGHTS_FILE)
    backbone_keys = {k for k in saved if k.startswith("backbone.")}
    if layers == 1:  # only the trained layer and the final norm are stored; the rest comes from the source
        assert backbone_keys == {f"backbone.{n}" for n in model.trained_names()}
        assert spec["backbone"] == str(backbone_dir.resolve())
    elif layers == -1:
        assert len(backbone_keys) == len(model.backbone.state_dict()) and spec["backbone"] == "."
    else:
        assert backbone_keys == set()
    loaded = ValueModel.load(tmp_path / "v")
    assert same_tokenizer(loaded.tokenizer, tok)
    for got, want in zip(response_values(loaded, p_ids, r_ids), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


# --- tokenizer comparison ------------------------------------------------------------------------------------------
def test_tokenizer_comparison_is_real(smol_tokenizer, _smol_tokenizer_once):
    from transformers import AutoTokenizer

    from spi_align.data.assets import minilm_dir

    assert smol_tokenizer is not _smol_tokenizer_once
    assert same_tokenizer(smol_tokenizer, _smol_tokenizer_once)  # a separate copy: same
    added = _copy(_smol_tokenizer_once)
    added.add_tokens(["<|my_new_token|>"])
    assert not same_tokenizer(added, _smol_tokenizer_once)
    templated = _copy(_smol_tokenizer_once)
    templated.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    assert not same_tokenizer(templated, _smol_tokenizer_once)
    other_eos = _copy(_smol_tokenizer_once)
    other_eos.eos_token = "<|im_start|>"
    assert not same_tokenizer(other_eos, _smol_tokenizer_once)
    bert = AutoTokenizer.from_pretrained(minilm_dir())
    assert not same_tokenizer(bert, _smol_tokenizer_once)


def _copy(tokenizer):
    import copy

    return copy.deepcopy(tokenizer)


# --- incremental scoring ----------------------------------------------------------------------------------------
def test_incremental_scoring_equals_scoring_from_scratch_through_selections(smol_tokenizer, _smol_tokenizer_once):
    policy = make_policy(make_tiny_causal_lm(smol_tokenizer), smol_tokenizer, max_new_tokens=16)
    policy.eos_ids = torch.arange(len(smol_tokenizer) // 12)  # ~8% of the vocabulary ends a row: rows stop early
    v1 = value_model(_copy(_smol_tokenizer_once), seed=1)
    v2 = value_model(v1.tokenizer, seed=2, backbone=v1.backbone)  # another head on the same backbone
    v3 = value_model(_copy(_smol_tokenizer_once), seed=3)
    models, weights = [v1, v2, v3], [1.0, 0.5, 0.4]
    guide = ValueModelGuide(models, weights, policy.tokenizer)
    assert guide.incremental == [True, True] and len(guide.groups) == 2
    fed: list[tuple[int, int]] = []
    original = v1.hidden

    def recording(ids, mask, cache=None):
        if cache is not None:  # the guide's calls (scoring from scratch passes no cache)
            fed.append(tuple(ids.shape))
        return original(ids, mask, cache)

    v1.hidden = recording  # type: ignore[method-assign]
    cost = Cost()
    rows = policy.start(PROMPTS, cost)
    rows = policy.extend(rows.select(torch.arange(3).repeat_interleave(3)), 4, cost)
    torch.testing.assert_close(guide(rows), from_scratch(models, weights, rows), atol=1e-4, rtol=0)
    widest_prompt = max(len(p) for p in rows.prompt_tokens)
    assert fed == [(3, widest_prompt), (9, 4)]  # each prompt prefilled once, then only the new tokens
    selections = [[0, 0, 4, 4, 4, 8, 1, 2, 2], [8, 7, 6, 5, 5, 0, 1, 1, 3, 3, 2], [1, 1, 1, 4, 9, 9, 10]]
    for step, index in enumerate(selections):
        rows = policy.extend(rows.select(torch.tensor(index)), 4, cost)
        new = int((rows.length - rows.extras[next(iter(rows.extras))].fed).max())
        calls = len(fed)
        torch.testing.assert_close(guide(rows), from_scratch(models, weights, rows), atol=1e-4, rtol=0)
        assert fed[calls:] == ([(len(index), new)] if new else []), step
    assert bool(rows.done.any()), "the test should cover rows that stopped"


def test_beam_search_with_a_value_model_scores_like_from_scratch(smol_tokenizer, _smol_tokenizer_once):
    policy = make_policy(make_tiny_causal_lm(smol_tokenizer), smol_tokenizer, max_new_tokens=14)
    policy.eos_ids = torch.arange(len(smol_tokenizer) // 15)
    models, weights = [value_model(_copy(_smol_tokenizer_once), seed=5)], [0.7]
    guide = ValueModelGuide(models, weights, policy.tokenizer)
    calls = []

    def checked(rows):
        got = guide(rows)
        torch.testing.assert_close(got, from_scratch(models, weights, rows), atol=1e-4, rtol=0)
        calls.append(rows.size)
        return got

    reward = LengthScorer()
    results = ChunkBeamSearch(policy, checked, reward, width=2, successors=3, chunk=3).run(PROMPTS, Cost())
    assert len(calls) >= 3 and len(results) == len(PROMPTS)


def test_other_tokenizer_scores_the_re_tokenised_text(smol_tokenizer):
    from transformers import AutoTokenizer, LlamaModel

    from spi_align.data.assets import minilm_dir

    bert = AutoTokenizer.from_pretrained(minilm_dir())
    config = tiny_llama_config(bert)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = bert.cls_token_id, bert.sep_token_id, 0
    torch.manual_seed(7)
    model = value_model(bert, backbone=LlamaModel(config).eval())
    policy = make_policy(make_tiny_causal_lm(smol_tokenizer), smol_tokenizer, max_new_tokens=10)
    guide = ValueModelGuide([model], [2.0], policy.tokenizer)
    assert guide.incremental == [False]
    cost = Cost()
    rows = policy.start(PROMPTS, cost)
    rows = policy.extend(rows.select(torch.tensor([0, 0, 1, 2, 2])), 5, cost)
    for index in (None, torch.tensor([4, 0, 0, 2])):
        if index is not None:
            rows = policy.extend(rows.select(index), 5, cost)
        texts = policy.texts(rows)
        expected = []
        for p, text in zip(rows.prompt_index.tolist(), texts, strict=True):
            ids = model.prompt_ids(PROMPTS[p]) + model.response_ids(text)
            with torch.no_grad():
                expected.append(2.0 * model(torch.tensor([ids]), torch.ones(1, len(ids), dtype=torch.long))[0, -1])
        torch.testing.assert_close(guide(rows), torch.stack(expected), atol=1e-4, rtol=0)
    assert model.prompt_ids(Prompt("p", "Hi"))[0] == bert.cls_token_id  # its own format, not the policy's chat template


# --- `spi run` with value=model --------------------------------------------------------------------------------
def test_config_defaults_anchor_values_on_the_partial_reward():
    spi = SPIConfig()
    assert spi.value == "anchored" and spi.value_backbone == "policy" and spi.value_train_layers == 2


def test_spi_run_with_value_models_trains_saves_and_resumes(tmp_path, _smol_tokenizer_once):
    model_dir = tmp_path / "tiny-policy"
    make_tiny_causal_lm(_smol_tokenizer_once).save_pretrained(model_dir)
    _smol_tokenizer_once.save_pretrained(model_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: name a colour."}) + "\n" for i in range(5)))
    scorer = str(Path(__file__).parent / "mocks" / "scorers.py") + ":vowel_share"
    argv = [
        "demo", f"data.prompts={prompts}", f"policy.model={model_dir}", f"run_dir={tmp_path}", "name=vm",
        f"evaluator={scorer}", f"reward={scorer}", "generation.max_new_tokens=6", "data.batch_size=3",
        "spi.chunk=3", "spi.width=2", "spi.successors=2", "spi.rollouts=3", "spi.rounds=2",
        "spi.value=model", "spi.value_train_layers=1", "spi.value_epochs=1",
    ]  # fmt: skip
    assert main(argv) == 0
    run = tmp_path / "vm"
    results = json.loads((run / "results.json").read_text())
    assert {"spi-1", "spi-2"} <= set(results["results"])
    for k in range(2):
        spec = json.loads((run / "values" / f"round-{k}" / "value_model.json").read_text())
        assert spec["train_layers"] == 1 and spec["backbone"] == str(model_dir.resolve())
        assert not (run / "values" / f"round-{k}" / "value_head.json").exists()
        metrics = json.loads((run / "values" / f"round-{k}.json").read_text())
        assert "heldout_spearman_at_end" in metrics and metrics["loss_last_epoch"] >= 0
    for suffix in ("jsonl", "cost.json"):  # the rerun must search spi-2 again, with both models loaded from disk
        (run / f"eval-spi-2.{suffix}").unlink()
    saved = (run / "values" / "round-1" / WEIGHTS_FILE).stat().st_mtime_ns
    assert main(argv) == 0
    assert (run / "values" / "round-1" / WEIGHTS_FILE).stat().st_mtime_ns == saved  # loaded, not retrained
    resumed = json.loads((run / "results.json").read_text())["results"]
    for method, res in results["results"].items():
        assert resumed[method]["evaluator"] == res["evaluator"], method
        assert resumed[method]["reward"] == res["reward"], method
