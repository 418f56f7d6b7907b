"""Do two tokenizers turn text into the same ids? Decides whether a value model can read the policy's tokens.

Compared for real, never an object with itself: the full token → id mapping, the special tokens and their ids,
the encoding of probe texts, and the chat template's output on a probe conversation.
"""

from __future__ import annotations

from typing import Any

PROBE_TEXTS = (
    "Hello world! Ünïcödé, numbers 12345, code `x = y[0]`,\n\ttabs and  double  spaces.",
    " leading space, emoji 🙂 and CJK 漢字.",
)
PROBE_CHAT = [{"role": "user", "content": "Name three colours."}]
_SPECIAL_ATTRS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")


def _chat(tokenizer: Any) -> str | None:
    if getattr(tokenizer, "chat_template", None) is None:
        return None
    try:
        return tokenizer.apply_chat_template(PROBE_CHAT, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # a template that rejects the probe: compare the failure instead
        return f"<error {type(exc).__name__}>"


def _fingerprint(tokenizer: Any) -> tuple[Any, ...]:
    specials = tuple(getattr(tokenizer, attr, None) for attr in _SPECIAL_ATTRS)
    special_map = tuple(sorted(zip(tokenizer.all_special_tokens, tokenizer.all_special_ids, strict=True)))
    encodings = tuple(
        tuple(tokenizer(text, add_special_tokens=add)["input_ids"]) for text in PROBE_TEXTS for add in (False, True)
    )
    return specials, special_map, encodings, _chat(tokenizer)


def same_tokenizer(a: Any, b: Any) -> bool:
    """True when `a` and `b` map every token to the same id, share special ids, encode the probes alike and
    format a probe chat identically (a value model fed `a`'s ids then sees exactly what `b` would give it)."""
    if a is b:
        return True
    if len(a) != len(b) or a.get_vocab() != b.get_vocab():
        return False
    return _fingerprint(a) == _fingerprint(b)
