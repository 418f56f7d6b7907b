"""How every policy backend reads a prompt: the chat template when the tokenizer has one (the model's own turn
markers), the tokenizer's special tokens only without it, and a prompt that leaves no room for `max_new_tokens`
inside the model's context refused with one line."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spi_align.config import GenerationConfig
from spi_align.errors import SpiError
from spi_align.interfaces import Prompt


class ChatPrompts:
    """Prompt encoding shared by `HFPolicy` and `VLLMPolicy` (and what the server counts as prompt tokens)."""

    tokenizer: Any
    chat_template: bool
    """True when prompts go through the tokenizer's chat template."""
    max_context: int | None
    """The model's context in tokens (None when the model does not say)."""
    gen: GenerationConfig
    context_setting: str = ""
    """Where a user sets the context, named in the error (e.g. 'policy.vllm.max_model_len')."""

    def format_prompt(self, prompt: Prompt) -> str:
        """The prompt as the model reads it (chat template applied when the policy uses one)."""
        if self.chat_template:
            return self.tokenizer.apply_chat_template(prompt.messages(), tokenize=False, add_generation_prompt=True)
        return prompt.text

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

    def checked_prompt_ids(self, prompts: Sequence[Prompt]) -> list[list[int]]:
        """`prompt_ids`, refusing a prompt that leaves less than `max_new_tokens` of the context."""
        encoded = self.prompt_ids(prompts)
        limit = self.gen.max_new_tokens
        for prompt, ids in zip(prompts, encoded, strict=True):
            left = self.context_left(len(ids))
            if left is not None and left < limit:
                where = f" ({self.context_setting})" if self.context_setting else ""
                raise SpiError(
                    f"prompt '{prompt.id}' has {len(ids)} tokens; with max_new_tokens={limit} it exceeds the "
                    f"model's context of {self.max_context} tokens{where}"
                )
        return encoded
