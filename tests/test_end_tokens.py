"""Where a response ends, and the logits it is sampled from: rows stop on the generation config's end ids (one or a
list) or else the tokenizer's, and on the token that closes the assistant's turn in the chat template; that token
(not the smallest listed id) closes partial responses for the reward head and pads, on tokenizers that mimic
Llama-3-Instruct and Qwen2.5-Instruct; one clear error when nothing names an end; the final-logit softcap."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch
from transformers import GenerationConfig as HFGenerationConfig

from conftest import make_policy
from mocks.chat_tokenizers import ChatModel, llama3, qwen25
from spi_align.config import GenerationConfig, PolicyConfig
from spi_align.core.errors import SpiError
from spi_align.core.records import Cost, Prompt
from spi_align.policy.prompts import end_tokens
from spi_align.scoring.reward_model import RewardModel
from spi_align.scoring.row_reward import PolicyHeadReward, same_token_layout
from spi_align.values.prefix_states import prefix_states

PROMPT = Prompt("a", "Name three colours.")
WORD, OTHER = 1000, 1001
ENDOFTEXT, IM_END = 0, 2  # SmolLM2: <|endoftext|> (the tokenizer's eos once set below), <|im_end|> (its chat end)


class ScriptedSampler:
    """The policy's sampler replaced by a script: call i returns `script[i]`, one token per row."""

    def __init__(self, script: list[list[int]]) -> None:
        self.script = script
        self.calls = 0

    def __call__(self, logits: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        self.calls += 1
        return torch.tensor(self.script[self.calls - 1], device=logits.device)


def ends(policy, first: list[int]) -> tuple[list[bool], list[int]]:
    """Rows that start with the tokens `first`, then say OTHER until max_new_tokens: (done, length) per row."""
    policy.sampler = ScriptedSampler([first] + [[OTHER] * len(first)] * policy.max_new_tokens)
    cost = Cost()
    rows = policy.start([PROMPT], cost).select(torch.zeros(len(first), dtype=torch.long))
    rows = policy.extend(rows, policy.max_new_tokens, cost)
    return rows.done.tolist(), rows.length.tolist()


def test_a_list_of_end_ids_in_the_generation_config_ends_rows_on_any_of_them(tiny_causal_lm, smol_tokenizer):
    tiny_causal_lm.generation_config.eos_token_id = [IM_END, WORD]
    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=4)
    assert ends(policy, [WORD, IM_END, OTHER, ENDOFTEXT]) == ([True, True, False, False], [1, 1, 4, 4])


def test_without_end_ids_in_the_generation_config_the_tokenizers_is_used(tiny_causal_lm, smol_tokenizer):
    tiny_causal_lm.generation_config.eos_token_id = None
    smol_tokenizer.eos_token = "<|endoftext|>"
    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=4)
    # the tokenizer's eos ends rows, and so does the template's turn end (<|im_end|>), which closes responses
    assert ends(policy, [ENDOFTEXT, IM_END, WORD]) == ([True, True, False], [1, 1, 4])
    assert policy.end_id == IM_END
    smol_tokenizer.chat_template = None  # no template: the tokenizer's eos alone
    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=4)
    assert ends(policy, [ENDOFTEXT, IM_END, WORD]) == ([True, False, False], [1, 4, 4])
    assert policy.end_id == ENDOFTEXT


def test_no_end_token_anywhere_is_one_clear_error(tiny_causal_lm, smol_tokenizer):
    tiny_causal_lm.generation_config.eos_token_id = None
    smol_tokenizer.eos_token = None
    smol_tokenizer.chat_template = None
    with pytest.raises(SpiError, match="names no end-of-sequence token") as err:
        make_policy(tiny_causal_lm, smol_tokenizer)
    assert "\n" not in str(err.value)


def test_the_final_logit_softcap_bounds_the_logits_as_cap_tanh(tiny_causal_lm, smol_tokenizer):
    cap = 0.05
    tiny_causal_lm.config.final_logit_softcapping = cap  # Llama's own forward ignores it: the reference below is raw
    policy = make_policy(tiny_causal_lm, smol_tokenizer, max_new_tokens=4)
    rows = policy.start([PROMPT], Cost())
    ids = smol_tokenizer(policy.format_prompt(PROMPT), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        raw = tiny_causal_lm(input_ids=torch.tensor([ids])).logits[0, -1].float()
    assert raw.abs().max() > 2 * cap  # the cap changes these logits
    torch.testing.assert_close(rows.next_logits[0], cap * torch.tanh(raw / cap), atol=1e-5, rtol=1e-4)
    assert rows.next_logits.abs().max() <= cap


# --- the assistant's turn end on Llama-3-Instruct and Qwen2.5-Instruct (ids and templates mimicked) -----------------

MIMICS = {"llama3": llama3, "qwen2.5": qwen25}


@pytest.fixture(scope="module", params=list(MIMICS))
def chat_model(request) -> ChatModel:
    return MIMICS[request.param]()


def policy_on(chat: ChatModel, max_new_tokens: int = 4):
    """A tiny random policy on the mimicked tokenizer, its generation config listing the model's end ids."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, intermediate_size=32,
        vocab_size=len(chat.tokenizer), max_position_embeddings=256, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = list(chat.generation_eos)
    return make_policy(model, copy.deepcopy(chat.tokenizer), max_new_tokens=max_new_tokens)


def test_the_turn_end_is_read_from_the_chat_template(chat_model):
    listed = HFGenerationConfig(eos_token_id=chat_model.generation_eos)
    got = end_tokens(chat_model.tokenizer, listed, chat_template=True)
    assert got.turn == chat_model.turn_end  # not min(listed): <|end_of_text|> / <|endoftext|> is the smaller id
    assert got.stop == tuple(sorted(chat_model.generation_eos))
    # no template in use: the generation config's first end id
    assert end_tokens(chat_model.tokenizer, listed, chat_template=False).turn == chat_model.generation_eos[0]


def test_the_policy_closes_partial_responses_with_the_turn_end_and_stops_on_every_end_id(chat_model):
    policy = policy_on(chat_model)
    assert policy.end_id == chat_model.turn_end
    if chat_model.tokenizer.pad_token_id is None:  # Llama-3 has no pad token: rows pad with the turn end
        assert policy.pad_id == chat_model.turn_end
    # stopping is unchanged: either listed id ends a row
    policy.sampler = ScriptedSampler([[chat_model.other_end, chat_model.turn_end, 5]] + [[6, 6, 6]] * 4)
    cost = Cost()
    rows = policy.extend(policy.start([PROMPT], cost).select(torch.zeros(3, dtype=torch.long)), 4, cost)
    assert rows.done.tolist() == [True, True, False] and rows.length.tolist() == [1, 1, 4]
    # R_t's state: the open row (prompt + 4 tokens) fed the turn end, as the reward model reads a finished reply
    peeked = policy.peek_end_hidden(rows)[2]
    ids = policy.prompt_ids([PROMPT])[0] + rows.token_lists()[2] + [chat_model.turn_end]
    with torch.no_grad():
        alone = policy.backbone(input_ids=torch.tensor([ids])).last_hidden_state[0, -1]
    torch.testing.assert_close(peeked, alone, atol=1e-4, rtol=1e-4)
    # e_t of a finished rollout's prefix, the same state
    states = prefix_states(policy, [PROMPT], [rows.token_lists()[2]], lengths=[4])
    torch.testing.assert_close(states[0].closed[0], alone.float(), atol=1e-4, rtol=1e-4)


def test_the_reward_head_reads_rows_when_its_text_ends_with_the_turn_end(chat_model):
    policy = policy_on(chat_model)
    reward_model = RewardModel(policy.backbone, policy.tokenizer)
    assert same_token_layout(reward_model, policy)  # format(prompt, response) = prompt + response + turn end
    assert PolicyHeadReward(reward_model, policy).from_rows


def test_the_vllm_backend_takes_the_same_end_tokens(chat_model, tmp_path, monkeypatch):
    """load_vllm_policy on a saved model folder (tokenizer + generation config), the engine a stand-in."""
    from spi_align.policy import vllm

    class Engine:
        llm_engine = SimpleNamespace(model_config=SimpleNamespace(max_model_len=256))

        def collective_rpc(self, method, args=()):
            return []

    chat_model.tokenizer.save_pretrained(tmp_path)
    HFGenerationConfig(eos_token_id=chat_model.generation_eos).save_pretrained(tmp_path)
    monkeypatch.setattr(vllm, "engine", lambda cfg, source: Engine())
    policy = vllm.load_vllm_policy(PolicyConfig(model=str(tmp_path), backend="vllm"), GenerationConfig(), seed=0)
    assert policy.end_id == chat_model.turn_end
    assert policy.eos_list == sorted(chat_model.generation_eos)
    expected_pad = chat_model.tokenizer.pad_token_id
    assert policy.pad_id == (chat_model.turn_end if expected_pad is None else expected_pad)
