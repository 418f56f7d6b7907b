"""How every policy backend reads a prompt and where its responses end.

Prompts: the chat template when the tokenizer has one (the model's own turn markers), the tokenizer's special
tokens only without it, and a prompt that leaves no room for `max_new_tokens` inside the model's context refused
with one line.

Ends (`end_tokens`): a row stops at any end id the generation config lists (else the tokenizer's eos), and the
token that closes the assistant's turn is read from the chat template itself: a one-turn conversation is rendered
and the token right after the assistant's content is taken. That token is what a finished response ends with in
the reward model's text, so it is the one fed to close a partial response (R_t, e_t) and to pad rows. The smallest
listed id is not it in general: Llama-3-Instruct lists [<|end_of_text|> 128001, <|eot_id|> 128009] and closes
turns with <|eot_id|>; Qwen2.5 lists [<|im_end|>, <|endoftext|>] with <|endoftext|> the smaller id. Without a
template the generation config's first end id closes a response.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError

from spi_align.config import GenerationConfig
from spi_align.core.errors import SpiError
from spi_align.core.records import Prompt
from spi_align.hf.chat import render

log = logging.getLogger(__name__)

TURN_PROBE = "SPI-TURN-PROBE"
"""The assistant's content in the conversation rendered to find the token that closes its turn."""


@dataclass(frozen=True)
class EndTokens:
    """Where a policy's responses end."""

    turn: int
    """The token that closes the assistant's turn: fed to close a partial response (R_t, e_t), and the padding."""
    stop: tuple[int, ...]
    """Every id that ends a row when sampled (ascending): the configured end ids and `turn`."""


def end_tokens(tokenizer: Any, generation_config: Any, chat_template: bool) -> EndTokens:
    """The end tokens of a policy (the module docstring): `generation_config` is the model's transformers
    generation config (or None), `chat_template` whether prompts go through the tokenizer's template."""
    configured = getattr(generation_config, "eos_token_id", None) if generation_config else None
    if configured is None:
        configured = tokenizer.eos_token_id
    listed = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    turn = _template_turn_end(tokenizer, listed) if chat_template and tokenizer.chat_template else None
    if turn is None:
        if not listed:
            raise SpiError(
                "the policy names no end-of-sequence token (neither chat template, generation config nor tokenizer)"
            )
        turn = int(listed[0])
    return EndTokens(turn, tuple(sorted({*map(int, listed), turn})))


def _template_turn_end(tokenizer: Any, listed: Sequence[int]) -> int | None:
    """The token right after the assistant's content in the rendered template, when it is a special token or a
    listed end id; None (with a warning) when the template does not close the turn with one."""
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": TURN_PROBE}]
    try:
        text = tokenizer.apply_chat_template(messages, tokenize=False)
    except (TemplateError, ValueError, TypeError, KeyError) as exc:
        log.warning("the chat template cannot render a reply (%s): turns end at the configured end id", exc)
        return None
    at = text.rfind(TURN_PROBE)
    after = tokenizer(text[at + len(TURN_PROBE) :], add_special_tokens=False)["input_ids"] if at >= 0 else []
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    if after and (after[0] in special or after[0] in listed):
        return int(after[0])
    log.warning("the chat template closes the assistant's turn with no special token: it ends at the configured end id")
    return None


class ChatPrompts:
    """Prompt encoding shared by `HFPolicy` and `VLLMPolicy` (and what the server counts as prompt tokens)."""

    tokenizer: Any
    chat_template: bool
    """True when prompts go through the tokenizer's chat template."""
    end_id: int
    """The token that closes the assistant's turn (`end_tokens`)."""
    max_context: int | None
    """The model's context in tokens (None when the model does not say)."""
    gen: GenerationConfig
    context_setting: str = ""
    """Where a user sets the context, named in the error (e.g. 'policy.vllm.max_model_len')."""

    def format_prompt(self, prompt: Prompt) -> str:
        """The prompt as the model reads it (`hf.chat.render`: the chat template when the policy uses one, else the
        turns' contents joined by blank lines)."""
        return render(self.tokenizer, prompt, templated=self.chat_template)

    def prompt_ids(self, prompts: Sequence[Prompt], tokenizer: Any | None = None) -> list[list[int]]:
        """Token ids of each prompt as the policy reads it (`format_prompt`; the tokenizer's special tokens only
        without a chat template, which writes its own). `tokenizer`: a copy of the policy's, for a caller on
        another thread than the one sampling (a fast tokenizer may not be called from two threads at once)."""
        texts = [self.format_prompt(p) for p in prompts]
        encode = tokenizer if tokenizer is not None else self.tokenizer
        return [list(ids) for ids in encode(texts, add_special_tokens=not self.chat_template)["input_ids"]]

    def context_left(self, prompt_tokens: int) -> int | None:
        """New tokens that still fit after a prompt of `prompt_tokens` tokens (None: no known limit)."""
        return None if self.max_context is None else self.max_context - prompt_tokens

    def checked_prompt_ids(self, prompts: Sequence[Prompt], limit: int | None = None) -> list[list[int]]:
        """`prompt_ids`, refusing a prompt that leaves less than `limit` new tokens (default: the policy's
        `max_new_tokens`) of the context."""
        encoded = self.prompt_ids(prompts)
        limit = self.gen.max_new_tokens if limit is None else limit
        for prompt, ids in zip(prompts, encoded, strict=True):
            left = self.context_left(len(ids))
            if left is not None and left < limit:
                where = f" ({self.context_setting})" if self.context_setting else ""
                raise SpiError(
                    f"prompt '{prompt.id}' has {len(ids)} tokens; with max_new_tokens={limit} it exceeds the "
                    f"model's context of {self.max_context} tokens{where}"
                )
        return encoded
