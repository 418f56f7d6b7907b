"""The paper's baselines on tiny models: implicit reward (hand-checked), BoN-I, weak-to-strong search, DPO."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import make_policy, make_tiny_causal_lm, write_prompt_file
from spi_align.config import GenerationConfig
from spi_align.core.records import Cost, Prompt
from spi_align.policy import HFPolicy
from spi_align.scoring.implicit import ImplicitReward
from spi_align.search import BestOfN
from spi_align.search.implicit_guide import CachedImplicitGuide
from spi_align.search.w2s import TextImplicitGuide, WeakToStrongSearch, implicit_best_of_n

PROMPTS = [Prompt("a", "Name three colours."), Prompt("b", "Write a poem about the sea."), Prompt("c", "Hi")]
RESPONSES = ["Red, green and blue.", "The sea is wide and deep, the waves roll on and on.", "Hello!"]


@torch.no_grad()
def hand_logprob(model, ids: list[int], first: int) -> float:
    """Σ_{t ≥ first} log p(ids[t] | ids[:t]) by a plain full forward of the causal LM, one sequence at a time."""
    logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return float(sum(logp[t - 1, ids[t]] for t in range(first, len(ids))))


def dialogue_ids(tokenizer, prompt: Prompt, response: str) -> tuple[list[int], int]:
    """Token ids of the whole templated dialogue and where the assistant's completion starts."""
    user = [{"role": "user", "content": prompt.text}]
    head = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([*user, {"role": "assistant", "content": response}], tokenize=False)
    head_ids = tokenizer(head, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    assert full_ids[: len(head_ids)] == head_ids
    return full_ids, len(head_ids)


@pytest.fixture
def pair(smol_tokenizer):
    return make_tiny_causal_lm(smol_tokenizer, seed=1), make_tiny_causal_lm(smol_tokenizer, seed=0)


def test_implicit_reward_is_the_summed_token_logprob_difference(pair, smol_tokenizer):
    tuned, ref = pair
    reward = ImplicitReward(tuned, ref, smol_tokenizer, beta=0.5, batch_size=2)  # batches mix lengths: padding
    scores = reward.score(PROMPTS, RESPONSES)
    for prompt, response, score in zip(PROMPTS, RESPONSES, scores, strict=True):
        ids, first = dialogue_ids(smol_tokenizer, prompt, response)
        assert smol_tokenizer.decode(ids[first:]).startswith(response)  # the completion, end-of-turn included
        expected = 0.5 * (hand_logprob(tuned, ids, first) - hand_logprob(ref, ids, first))
        assert score == pytest.approx(expected, abs=1e-3)
        assert abs(expected) > 0.1  # two different random models: the check is not vacuous


def test_prefix_scores_cover_only_the_partial_response_tokens(pair, smol_tokenizer):
    tuned, ref = pair
    reward = ImplicitReward(tuned, ref, smol_tokenizer)
    partial = [r[:9] for r in RESPONSES]
    by_text = reward.score_prefixes(PROMPTS, partial)
    tokens = [smol_tokenizer(t, add_special_tokens=False)["input_ids"] for t in partial]
    assert reward.score_token_prefixes(PROMPTS, tokens) == pytest.approx(by_text, abs=1e-4)
    for prompt, toks, score in zip(PROMPTS, tokens, by_text, strict=True):
        head = reward.prompt_ids(prompt)
        ids = head + toks
        expected = hand_logprob(tuned, ids, len(head)) - hand_logprob(ref, ids, len(head))
        assert score == pytest.approx(expected, abs=1e-3)


def test_implicit_reward_of_a_model_against_itself_is_zero(tiny_causal_lm, smol_tokenizer):
    reward = ImplicitReward(tiny_causal_lm, copy.deepcopy(tiny_causal_lm), smol_tokenizer)
    assert reward.score(PROMPTS, RESPONSES) == pytest.approx([0.0] * 3, abs=1e-5)
    assert reward.score_prefixes(PROMPTS, RESPONSES) == pytest.approx([0.0] * 3, abs=1e-5)


def test_bon_implicit_picks_the_argmax_of_the_implicit_reward(pair, smol_tokenizer):
    tuned, ref = pair
    reward = ImplicitReward(tuned, ref, smol_tokenizer)
    search = implicit_best_of_n(make_policy(ref, smol_tokenizer, max_new_tokens=16), reward, n=5)
    cost = Cost()
    results = search.run(PROMPTS, cost)
    assert search.name == "bon-i-5" and cost.reward_calls == 15
    for result in results:
        texts = [c.text for c in result.candidates]
        again = reward.score([result.prompt] * len(texts), texts)
        assert [c.score for c in result.candidates] == pytest.approx(again, abs=1e-4)
        assert len(set(again)) > 1
        assert result.chosen is result.candidates[max(range(len(again)), key=again.__getitem__)]


def e_token_mask(tokenizer) -> torch.Tensor:
    vocab = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    return torch.tensor([("e" in (t or "")) for t in vocab], dtype=torch.float32)


def prefers(model, favoured: torch.Tensor, strength: float) -> nn.Module:
    """A copy of `model` whose LM head adds `strength` to the logits of the favoured tokens: a 'tuned' model."""
    tuned = copy.deepcopy(model)
    old = model.get_output_embeddings()
    head = nn.Linear(old.in_features, old.out_features, bias=True)
    with torch.no_grad():
        head.weight.copy_(old.weight)
        head.bias.copy_(strength * favoured)
    tuned.set_output_embeddings(head)
    return tuned


def test_cached_guide_equals_scoring_each_prefix_from_scratch(pair, smol_tokenizer):
    tuned, ref = pair
    reward = ImplicitReward(tuned, ref, smol_tokenizer)
    policy = make_policy(ref, smol_tokenizer, max_new_tokens=12)
    policy.eos_ids = torch.arange(len(smol_tokenizer) // 8)  # rows end at different steps: ragged new tokens
    guide = CachedImplicitGuide(reward)
    cost = Cost()
    rows = policy.extend(policy.start(PROMPTS, cost).select(torch.arange(3).repeat_interleave(4)), 4, cost)
    ragged = False
    for step in range(3):
        values = guide(rows)
        prompts = [PROMPTS[i] for i in rows.prompt_index.tolist()]
        expected = reward.score_token_prefixes(prompts, rows.token_lists())
        assert values.tolist() == pytest.approx(expected, abs=1e-3)
        ragged |= len(set(rows.length.tolist())) > 1
        index = torch.tensor([0, 0, 3, 5, 5, 5, 8, 9, 11, 11, 2, 7])[torch.randperm(12)] if step == 0 else None
        rows = policy.extend(rows.select(index if index is not None else torch.arange(rows.size).flip(0)), 4, cost)
    assert ragged


def test_w2s_ranks_by_prefix_implicit_reward_and_spends_the_bon_budget(tiny_causal_lm, smol_tokenizer):
    has_e = e_token_mask(smol_tokenizer)
    reward = ImplicitReward(prefers(tiny_causal_lm, has_e, 3.0), tiny_causal_lm, smol_tokenizer)

    def e_share(results) -> float:
        cands = [c for r in results for c in r.candidates]
        return float(sum(has_e[c.token_ids].mean() for c in cands) / len(cands))

    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=16)
    policy.eos_ids = torch.tensor([-1])  # nothing ends early: both methods run every candidate to the end
    w2s = WeakToStrongSearch(policy, reward, width=2, successors=4, chunk=4)
    assert w2s.shared_tokens
    w2s_cost, bon_cost = Cost(), Cost()
    guided = w2s.run(PROMPTS, w2s_cost)
    unguided = BestOfN(policy, reward, n=8).run(PROMPTS, bon_cost)
    assert w2s_cost.tokens_generated == bon_cost.tokens_generated == len(PROMPTS) * 8 * 16
    assert w2s_cost.policy_forwards == bon_cost.policy_forwards
    assert w2s_cost.reward_calls == bon_cost.reward_calls == len(PROMPTS) * 8
    assert e_share(guided) > e_share(unguided) + 0.1  # measured 0.70 vs 0.53; +0.15 to +0.23 over seeds 0-2
    for result in guided:  # the final pick is the implicit reward's argmax
        assert result.chosen.score == max(c.score for c in result.candidates)


def byte_tokenizer():
    """A small byte-level BPE tokenizer trained here: a real tokenizer that is not SmolLM2's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator([p.text for p in PROMPTS] + RESPONSES, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", pad_token="</s>")


def test_w2s_with_another_tokenizer_scores_re_tokenised_text(pair, smol_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    other = byte_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=64,
        vocab_size=len(other), max_position_embeddings=256, eos_token_id=other.eos_token_id,
    )  # fmt: skip
    big = LlamaForCausalLM(config).eval()
    policy = HFPolicy(big, other, GenerationConfig(max_new_tokens=12, temperature=1.0, top_k=0), chat_template=False)
    tuned, ref = pair
    reward = ImplicitReward(tuned, ref, smol_tokenizer)
    w2s = WeakToStrongSearch(policy, reward, width=2, successors=2, chunk=4)
    assert not w2s.shared_tokens
    assert isinstance(w2s.guide, TextImplicitGuide)
    results = w2s.run(PROMPTS, Cost())
    for result in results:
        texts = [c.text for c in result.candidates]
        assert [c.score for c in result.candidates] == pytest.approx(
            reward.score([result.prompt] * len(texts), texts), abs=1e-4
        )
        assert result.chosen.score == max(c.score for c in result.candidates)
    rows = policy.extend(policy.start(PROMPTS, Cost()), 5, Cost())
    texts = policy.texts(rows)
    assert w2s.guide(rows).tolist() == pytest.approx(reward.score_prefixes(PROMPTS, texts), abs=1e-4)


def test_dpo_raises_the_implicit_margin_of_its_training_pairs(tiny_causal_lm, smol_tokenizer, tmp_path):
    from transformers import AutoModelForCausalLM

    from spi_align.train.dpo import margins, train_dpo

    pairs = [
        (p, "Yes, gladly: here is a clear and complete answer.", "No.") if i % 2 else (p, "Sure thing!", "I won't.")
        for i, p in enumerate(PROMPTS + [Prompt("d", "Tell me a joke."), Prompt("e", "Sum 2 and 2.")])
    ]
    metrics = train_dpo(tiny_causal_lm, smol_tokenizer, pairs, tmp_path / "dpo", steps=6, batch_size=2, lr=5e-3)
    assert metrics["pairs"] == 5 and len(metrics["log"]) > 0
    assert metrics["train_margin"] > 0.5 and metrics["train_accuracy"] == 1.0
    assert (tmp_path / "dpo" / "model.safetensors").is_file()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "dpo")
    assert reloaded.generation_config.eos_token_id == 2
    after = margins(ImplicitReward(reloaded, tiny_causal_lm, smol_tokenizer, beta=0.1), pairs)
    assert float(after.mean()) == pytest.approx(metrics["train_margin"], abs=1e-3)
    before = margins(ImplicitReward(copy.deepcopy(tiny_causal_lm), tiny_causal_lm, smol_tokenizer), pairs)
    assert float(before.abs().max()) < 1e-5


def test_spi_run_evaluates_the_baselines_at_the_same_budgets_and_resumes(tmp_path, smol_tokenizer):
    from spi_align.cli import main

    model_dir = tmp_path / "tiny-policy"
    make_tiny_causal_lm(smol_tokenizer).save_pretrained(model_dir)
    smol_tokenizer.save_pretrained(model_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Question {i}: name a colour.", "reference": "Blue."}) + "\n"
                               for i in range(4)))  # fmt: skip
    scorer = str(Path(__file__).parent / "mocks" / "scorers.py") + ":vowel_share"
    argv = [
        "demo", f"data.prompts={prompts}", f"policy.model={model_dir}", f"run_dir={tmp_path}", "name=base",
        f"evaluator={scorer}", "reward=train", "generation.max_new_tokens=8", "data.batch_size=2",
        "spi.chunk=3", "spi.width=2", "spi.successors=2", "spi.rollouts=4", "spi.rounds=1",
        "baselines.dpo=true", "baselines.bon_implicit=true", "baselines.w2s=true",
        "baselines.dpo_steps=2", "baselines.dpo_batch_size=2", "baselines.dpo_lr=1e-3",
    ]  # fmt: skip
    assert main(argv) == 0
    run = tmp_path / "base"
    results = json.loads((run / "results.json").read_text())["results"]
    assert list(results) == ["sample", "bon-4", "spi-1", "dpo", "bon-i-4", "w2s"]
    cost = {k: r["cost"] for k, r in results.items()}
    assert cost["bon-i-4"]["tokens_generated"] == cost["bon-4"]["tokens_generated"]
    assert cost["bon-i-4"]["reward_calls"] == cost["bon-4"]["reward_calls"] == 4 * 4
    assert cost["w2s"]["value_calls"] > 0 and cost["w2s"]["reward_calls"] >= 4 * 4
    assert cost["dpo"]["tokens_generated"] <= 4 * 8 and cost["dpo"]["reward_calls"] == 0
    dpo = json.loads((run / "dpo.json").read_text())
    assert dpo["pairs"] > 0 and (run / "dpo" / "model.safetensors").is_file()
    assert "| w2s |" in (run / "report.md").read_text()

    stamp = (run / "dpo" / "model.safetensors").stat().st_mtime_ns
    assert main(argv) == 0  # resumes: nothing retrained, the same results
    assert (run / "dpo" / "model.safetensors").stat().st_mtime_ns == stamp
    assert json.loads((run / "results.json").read_text())["results"] == results


def test_dpo_tunes_on_the_very_pairs_the_reward_model_is_fitted_on(tmp_path, tiny_model_dir, monkeypatch):
    from spi_align.config import Config, build_config
    from spi_align.experiment import spi_run
    from spi_align.experiment.baselines import Baselines
    from spi_align.spi import SuccessivePolicyIteration

    prompts = write_prompt_file(tmp_path, 3)
    scorer = str(Path(__file__).parent / "mocks" / "scorers.py") + ":vowel_share"
    overrides = [
        f"data.prompts={prompts}", f"policy.model={tiny_model_dir}", f"run_dir={tmp_path}", "name=pairs",
        f"evaluator={scorer}", "reward=train", "generation.max_new_tokens=12", "spi.rollouts=5",
        "baselines.dpo=true",
    ]  # fmt: skip
    cfg = build_config(Config, overrides=overrides)
    run = spi_run.SPIRun(cfg)
    rollouts0 = SuccessivePolicyIteration(run.policy, None, cfg, run.run).rollouts(0, run.train_prompts)

    seen: dict[str, list] = {}
    fit_reward = spi_run.train_reward_head_on_states

    def recording_fit(model, states, groups, labels, reward_cfg, seed, pairs):
        seen["reward"] = list(pairs)
        return fit_reward(model, states, groups, labels, reward_cfg, seed, pairs)

    def recording_dpo(policy, tokenizer, pairs, out_dir, **settings):
        seen["dpo"] = list(pairs)
        policy.save_pretrained(out_dir)
        return {"pairs": len(pairs), "train_margin": 0.0, "train_accuracy": 0.0}

    monkeypatch.setattr(spi_run, "train_reward_head_on_states", recording_fit)
    monkeypatch.setattr("spi_align.train.dpo.train_dpo", recording_dpo)
    reward, _ = run.obtain_reward(rollouts0)
    Baselines(cfg, run.run, run.policy, reward, lambda: run.preference_pairs(rollouts0)).dpo_model()

    samples, texts, labels, _ = run.round0_preferences(rollouts0)
    assert seen["dpo"] == [(samples[a], texts[a], texts[b]) for a, b in seen["reward"]]
    every_ordered_pair = [
        (a, b)
        for a in range(len(samples))
        for b in range(len(samples))
        if samples[a].id == samples[b].id and labels[a] > labels[b]
    ]
    assert sorted(seen["reward"]) == every_ordered_pair
    per_prompt = [sum(samples[a].id == p.id for a, _ in seen["reward"]) for p in run.train_prompts]
    assert max(per_prompt) > 2  # more than the two best-vs-worst pairs a prompt used to give DPO
