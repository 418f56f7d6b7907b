"""Tokenizers that mimic Llama-3-Instruct and Qwen2.5-Instruct where end tokens are concerned, built offline.

Each is a word-level `PreTrainedTokenizerFast` whose special tokens sit at the real models' ids under their real
names, with the model's chat template (Qwen2.5's without its tool branches), and `generation_eos` the end ids the
model's generation config lists. Ordinary words are a few real ones and numbered fillers up to the first special id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

WORDS = ["user", "assistant", "system", "Hi", "Name", "a", "three", "colours", "Blue", "like", "the", "sky", ",", "."]

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
"""Meta-Llama-3-8B-Instruct's chat template."""

QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant' and not message.tool_calls) %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
"""Qwen2.5-Instruct's chat template without the tool-call branches."""


@dataclass
class ChatModel:
    """A mimicked model's tokenizer and what its generation config says."""

    tokenizer: Any
    generation_eos: list[int]
    turn_end: int
    """The id that closes the assistant's turn in its template."""
    other_end: int
    """The listed end id that does not close turns."""


def word_level_tokenizer(specials: dict[int, str], template: str) -> Any:
    """Words and fillers up to the smallest special id, then `specials` at their ids (fillers in any gaps)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    first = min(specials)
    vocab = {w: i for i, w in enumerate(["[UNK]", *WORDS])}
    vocab |= {f"w{i}": i for i in range(len(vocab), first)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]")
    names = [specials.get(i, f"<|filler_{i}|>") for i in range(first, max(specials) + 1)]
    tokenizer.add_special_tokens({"additional_special_tokens": names})
    for i, name in specials.items():
        assert tokenizer.convert_tokens_to_ids(name) == i
    tokenizer.chat_template = template
    return tokenizer


def llama3() -> ChatModel:
    """Llama-3-Instruct: turns end with <|eot_id|> 128009; the generation config lists [128001, 128009]."""
    specials = {128000: "<|begin_of_text|>", 128001: "<|end_of_text|>", 128006: "<|start_header_id|>"}
    specials |= {128007: "<|end_header_id|>", 128009: "<|eot_id|>"}
    tokenizer = word_level_tokenizer(specials, LLAMA3_TEMPLATE)
    tokenizer.bos_token, tokenizer.eos_token = "<|begin_of_text|>", "<|end_of_text|>"
    return ChatModel(tokenizer, [128001, 128009], turn_end=128009, other_end=128001)


def qwen25() -> ChatModel:
    """Qwen2.5-Instruct: turns end with <|im_end|> 151645; the generation config lists [151645, 151643], and
    <|endoftext|> 151643 is also the pad token."""
    specials = {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>"}
    tokenizer = word_level_tokenizer(specials, QWEN25_TEMPLATE)
    tokenizer.eos_token, tokenizer.pad_token = "<|im_end|>", "<|endoftext|>"
    return ChatModel(tokenizer, [151645, 151643], turn_end=151645, other_end=151643)
