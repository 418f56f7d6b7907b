"""`reward: train` writes a standard reward model: the head on the policy's backbone saved as a transformers sequence
classifier that plain `AutoModelForSequenceClassification` and `reward=<folder>` read with the run's own rewards; the
pad token that makes a classifier read the turn's end token; `spi run` with the top layers tuned, and its bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import make_policy, make_tiny_causal_lm, write_prompt_file
from spi_align.cli import main
from spi_align.config import RewardTrainConfig
from spi_align.core.errors import SpiError
from spi_align.core.records import Cost, Prompt
from spi_align.scoring import make_scorer
from spi_align.scoring.classifier import ClassifierReward
from spi_align.scoring.reward_model import RewardModel, RewardModelScorer, reading_pad_id, save_trained_reward
from spi_align.scoring.train_reward import train_reward_head_on_states

PROMPTS = [
    Prompt("a", "Name a colour."),
    Prompt("b", "Write a long poem about the sea at night, please."),
    Prompt("c", "And why?", history=(("user", "Pick a number."), ("assistant", "Seven."))),
]
RESPONSES = ["Blue, like the sky.", "Waves\n", "Because seven is the number I like best of all of them."]
SCORER = str(Path(__file__).parent / "mocks" / "scorers.py") + ":vowel_share"


def plain_scores(folder: Path, texts: list[str] | None = None) -> list[float]:
    """Nothing of ours: the folder's model and tokenizer, each conversation through its chat template (or `texts`
    as they are), one at a time."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    out = []
    with torch.no_grad():
        for k, (prompt, response) in enumerate(zip(PROMPTS, RESPONSES, strict=True)):
            if texts is None:
                turns = [*prompt.messages(), {"role": "assistant", "content": response}]
                enc = tokenizer.apply_chat_template(turns, return_dict=True, return_tensors="pt")
            else:
                enc = tokenizer(texts[k], add_special_tokens=False, return_tensors="pt")
            out.append(float(model(**enc).logits[0, 0]))
    return out


def close(got, expected) -> None:
    torch.testing.assert_close(torch.tensor(got), torch.tensor(expected), atol=1e-5, rtol=1e-5)


def test_a_trained_head_saved_is_a_reward_model_with_the_runs_rewards(tmp_path, tiny_causal_lm, smol_tokenizer):
    policy = make_policy(tiny_causal_lm, smol_tokenizer)
    model = RewardModel(policy.backbone, smol_tokenizer, source="tiny")
    gen = torch.Generator().manual_seed(0)
    states, groups = torch.randn(40, 32, generator=gen), [f"p{i // 4}" for i in range(40)]
    labels = (states @ torch.randn(32, generator=gen)).tolist()
    train_reward_head_on_states(model, states, groups, labels, RewardTrainConfig(epochs=20))
    assert float(model.head.bias) == 0.0 and float(model.head.weight.abs().sum()) > 0  # no offset to lose
    run_scores = RewardModelScorer(model).score(PROMPTS, RESPONSES)
    folder = save_trained_reward(model, tmp_path / "rm")

    close(plain_scores(folder), run_scores)  # the template's whole turn, read at its end token
    close(plain_scores(folder, [model.format(p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]), run_scores)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    batch = AutoTokenizer.from_pretrained(folder)(
        [model.format(p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)],
        padding=True, add_special_tokens=False, return_tensors="pt",
    )  # fmt: skip
    with torch.no_grad():
        close(AutoModelForSequenceClassification.from_pretrained(folder)(**batch).logits[:, 0].tolist(), run_scores)

    reward = make_scorer(str(folder), policy=policy)  # reward=<folder>: the classifier, reading the policy's ids
    assert isinstance(reward, ClassifierReward) and reward.tail is not None
    close(reward.score(PROMPTS, RESPONSES), run_scores)
    response = "Blue,\nlike the sky."  # its newline is the reward's pad token, not one the policy's decoding drops
    tokens = smol_tokenizer(response, add_special_tokens=False)["input_ids"]
    rows = SimpleNamespace(prompts=PROMPTS[:1], prompt_index=torch.tensor([0]), token_lists=lambda index: [tokens])
    assert reward.pad_id in tokens
    close(reward.score_rows(rows, torch.tensor([0]), Cost()), reward.score(PROMPTS[:1], [response]))
    assert smol_tokenizer.pad_token == "<|im_end|>"  # the policy's tokenizer is left as it was


def test_the_reading_pad_is_what_the_template_writes_after_the_end_token(smol_tokenizer):
    assert reading_pad_id(smol_tokenizer) == smol_tokenizer.convert_tokens_to_ids("Ċ")  # "<|im_end|>\n"
    flush = copy.deepcopy(smol_tokenizer)  # the turn ends at its end token: any pad but that token
    flush.chat_template = "{% for m in messages %}{{ m['content'] }}<|im_end|>{% endfor %}"
    assert flush.pad_token_id == 2 and reading_pad_id(flush) == smol_tokenizer.unk_token_id == 0
    two = copy.deepcopy(smol_tokenizer)  # two different tokens after it ("\n\n" made one): no pad skips both
    two.add_tokens(["\n\n"])
    two.chat_template = "{% for m in messages %}{{ m['content'] }}<|im_end|>\n\n\n{% endfor %}"
    with pytest.raises(SpiError, match="after a turn's end token"):
        reading_pad_id(two)


def run_args(tmp_path: Path, model: Path, *extra: str) -> list[str]:
    prompts = write_prompt_file(tmp_path, 6)
    return [
        "demo", f"run_dir={tmp_path}", "name=tuned", f"policy.model={model}", f"data.prompts={prompts}",
        f"evaluator={SCORER}", "reward=train", "generation.max_new_tokens=8", "data.batch_size=3", "data.limit=2",
        "spi.chunk=4", "spi.width=2", "spi.successors=2", "spi.tree=[]", "spi.rollouts=3", "spi.rounds=1", *extra,
    ]  # fmt: skip


def test_spi_run_tunes_the_top_layers_and_uses_that_reward_model(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file

    from spi_align.spi import load

    tune = [
        "reward_model.layers=1",
        "reward_model.tune_lr=[0.003]",
        "reward_model.tune_epochs=1",
        "reward_model.epochs=20",
    ]
    assert main(run_args(tmp_path, tiny_model_dir, *tune)) == 0
    run = tmp_path / "tuned"
    metrics = json.loads((run / "reward_model.json").read_text())
    assert metrics["layers"] == 1 and metrics["pairs"] > 0 and metrics["epochs"] == 1
    for key in ("choice_accuracy", "heldout_accuracy", "heldout_spearman_with_labeller", "head_heldout_accuracy"):
        assert key in metrics, key
    assert "| heldout_accuracy |" in (run / "report.md").read_text()
    pairs = json.loads((run / "reward_pairs.json").read_text())
    assert len(pairs["pairs"]) == metrics["pairs"] and "reference" not in pairs["samples"][0]
    assert not (run / "reward_model" / "spi_reward.json").exists()
    base, tuned = load_file(tiny_model_dir / "model.safetensors"), load_file(run / "reward_model" / "model.safetensors")
    moved = {k for k in tuned if k in base and not torch.equal(base[k], tuned[k])}
    assert moved == {k for k in base if k.startswith(("model.layers.1.", "model.norm."))}

    improved = load(run)  # the run's reward is that classifier, reading the policy's token ids
    assert isinstance(improved.reward, ClassifierReward) and improved.reward.tail is not None
    close(improved.reward.score(PROMPTS, RESPONSES), plain_scores(run / "reward_model"))
    again = load(improved.save(tmp_path / "saved")).reward  # saved by the library API as it is
    close(again.score(PROMPTS, RESPONSES), improved.reward.score(PROMPTS, RESPONSES))
    for record in map(json.loads, (run / "eval-bon-4.jsonl").read_text().splitlines()):
        assert record["score"] == max(c["score"] for c in record["candidates"])  # best-of-N picked by it


def test_more_layers_than_the_policy_has_is_one_line_before_sampling(capsys, tmp_path, tiny_model_dir):
    assert main(run_args(tmp_path, tiny_model_dir, "reward_model.layers=3")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "reward_model.layers=3, but the policy" in err and "has 2 layers" in err
    assert not (tmp_path / "tuned" / "rollouts-0.jsonl").exists()


def test_the_bench_loads_its_reward_with_the_policys_dtype_and_tokens(tmp_path, tiny_model_dir, tiny_classifier_dir):
    from spi_align.config import BenchConfig, build_config
    from spi_align.experiment.bench.context import BenchContext

    prompts = write_prompt_file(tmp_path, 2)
    overrides = [f"policy.model={tiny_model_dir}", f"reward={tiny_classifier_dir}", f"data.prompts={prompts}"]
    cfg = build_config(BenchConfig, None, [*overrides, "policy.dtype=bfloat16", "policy.device=cpu"])
    ctx = BenchContext.load(cfg, value_model=False, other_backends=False)
    assert isinstance(ctx.reward, ClassifierReward) and ctx.reward.tail is not None
    assert next(ctx.reward.model.parameters()).dtype == torch.bfloat16


def test_a_tokenizer_padding_otherwise_still_reads_the_policys_ids(tiny_classifier_dir, smol_tokenizer):
    reward = ClassifierReward.load(str(tiny_classifier_dir))
    reward.tokenizer.pad_token = "Ċ"
    reward.pad_id = reward.tokenizer.pad_token_id
    reward.model.config.pad_token_id = reward.pad_id
    assert reward.attach(make_policy(make_tiny_causal_lm(smol_tokenizer), smol_tokenizer, max_new_tokens=4))
