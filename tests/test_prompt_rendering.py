"""Every path that renders a prompt keeps its earlier turns (`Prompt.history`, which the server sends), with and
without a chat template, and a single-turn prompt renders as before."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from conftest import make_tiny_causal_lm, make_tiny_classifier
from spi_align.core.records import Prompt
from spi_align.hf.chat import render
from spi_align.policy.prompts import ChatPrompts
from spi_align.scoring.classifier import ClassifierReward
from spi_align.scoring.implicit import ImplicitReward
from spi_align.scoring.reward_model import RewardModel
from spi_align.train.dpo import preference_dataset
from spi_align.values.model import ValueModel

EARLIER_USER, EARLIER_ASSISTANT = "Name a fruit.", "A pear."
CONVERSATION = Prompt("c", "And a colour?", history=(("user", EARLIER_USER), ("assistant", EARLIER_ASSISTANT)))


def _policy(tok: Any, templated: bool) -> str:
    prompts = ChatPrompts()
    prompts.tokenizer, prompts.chat_template = tok, templated
    return prompts.format_prompt(CONVERSATION)


def _value_model(tok: Any, templated: bool) -> str:
    model = ValueModel(make_tiny_causal_lm(tok).model, tok, chat_template=templated)
    return tok.decode(model.prompt_ids(CONVERSATION))


def _implicit(tok: Any, templated: bool) -> str:
    lm = make_tiny_causal_lm(tok)
    reward = ImplicitReward(lm, lm, tok, chat_template=templated)
    return tok.decode(reward.prompt_ids(CONVERSATION)) + reward.completion_text(CONVERSATION, "Red.")


def _reward_model(tok: Any, templated: bool) -> str:
    return RewardModel(make_tiny_causal_lm(tok).model, tok).format(CONVERSATION, "Red.")


def _classifier(tok: Any, templated: bool) -> str:
    return ClassifierReward(make_tiny_classifier(tok), tok).render(CONVERSATION, "Red.")


def _dpo(tok: Any, templated: bool) -> str:
    row = preference_dataset([(CONVERSATION, "Red.", "No.")], chat=templated)[0]
    return str(row["prompt"])


RENDERERS: dict[str, Callable[[Any, bool], str]] = {
    "policy": _policy,
    "value_model": _value_model,
    "implicit": _implicit,
    "reward_model": _reward_model,
    "classifier": _classifier,
    "dpo": _dpo,
}


@pytest.mark.parametrize("templated", [True, False], ids=["template", "no-template"])
@pytest.mark.parametrize("name", list(RENDERERS))
def test_every_renderer_keeps_the_earlier_turns(smol_tokenizer, name, templated):
    tok = smol_tokenizer if templated else _without_template(smol_tokenizer)
    text = RENDERERS[name](tok, templated)
    assert EARLIER_USER in text and EARLIER_ASSISTANT in text and CONVERSATION.text in text
    assert text.index(EARLIER_USER) < text.index(EARLIER_ASSISTANT) < text.index(CONVERSATION.text)


def test_render_by_hand(smol_tokenizer):
    single = Prompt("s", "Say hi.")
    plain = _without_template(smol_tokenizer)
    assert render(plain, single, templated=False) == "Say hi."
    assert render(plain, single, "Hi!", templated=False, separator="\n") == "Say hi.\nHi!"
    assert render(plain, CONVERSATION, "Red.", templated=False) == "Name a fruit.\n\nA pear.\n\nAnd a colour?\n\nRed."
    chat = render(smol_tokenizer, CONVERSATION, templated=True)
    assert chat.endswith("<|im_start|>user\nAnd a colour?<|im_end|>\n<|im_start|>assistant\n")
    assert "<|im_start|>assistant\nA pear.<|im_end|>" in chat
    # a single-turn prompt renders as the tokenizer's template writes one user turn (what every path did before)
    one_turn = [{"role": "user", "content": "Say hi."}]
    assert render(smol_tokenizer, single, templated=True) == smol_tokenizer.apply_chat_template(
        one_turn, tokenize=False, add_generation_prompt=True
    )
    assert render(smol_tokenizer, single, "Hi!", templated=True) == smol_tokenizer.apply_chat_template(
        [*one_turn, {"role": "assistant", "content": "Hi!"}], tokenize=False
    )


def _without_template(tokenizer: Any) -> Any:
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = None
    return plain
