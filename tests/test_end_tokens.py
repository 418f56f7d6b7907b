"""Where a response ends, and the logits it is sampled from: end-of-turn ids from the generation config (one or a
list) or else the tokenizer, one clear error when neither names one, and the final-logit softcap."""

from __future__ import annotations

import pytest
import torch

from conftest import make_policy
from spi_align.errors import SpiError
from spi_align.interfaces import Cost, Prompt

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
    assert ends(policy, [ENDOFTEXT, IM_END, WORD]) == ([True, False, False], [1, 4, 4])


def test_no_end_token_anywhere_is_one_clear_error(tiny_causal_lm, smol_tokenizer):
    tiny_causal_lm.generation_config.eos_token_id = None
    smol_tokenizer.eos_token = None
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
