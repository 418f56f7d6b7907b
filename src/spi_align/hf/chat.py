"""A conversation as a model reads it: the one rendering of a `Prompt` (its `history`, then its `text` as the user's
turn) and, optionally, a response as the assistant's turn, shared by the policy backends, value models, reward
models (trained here or loaded from the hub), the implicit reward and the DPO data.

With a chat template the tokenizer's own `apply_chat_template` writes it: a prompt alone gets the generation prompt
(what a policy continues), a prompt with a response gets the whole assistant turn. Without a template the turns'
contents are joined by a separator, so a single-turn prompt is its text as it is. Every renderer goes through
here, so none drops the earlier turns the server sends.
"""

from __future__ import annotations

from typing import Any

from spi_align.core.records import Prompt


def messages(prompt: Prompt, response: str | None = None) -> list[dict[str, str]]:
    """The conversation in chat-template form: `prompt.messages()`, then `response` as the assistant's turn."""
    turns = prompt.messages()
    return turns if response is None else [*turns, {"role": "assistant", "content": response}]


def render(
    tokenizer: Any, prompt: Prompt, response: str | None = None, *, templated: bool, separator: str = "\n\n"
) -> str:
    """The conversation as text (the module docstring). `templated`: whether the caller reads through the chat
    template (it checks that the tokenizer has one); `separator`: what joins the turns without a template."""
    if templated:
        return tokenizer.apply_chat_template(
            messages(prompt, response), tokenize=False, add_generation_prompt=response is None
        )
    contents = [content for _, content in prompt.history] + [prompt.text]
    return separator.join(contents if response is None else [*contents, response])
