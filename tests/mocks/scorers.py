"""Stand-in scorers for tests, loadable as 'tests/mocks/scorers.py:function'."""

from __future__ import annotations


def vowel_share(prompts, responses):
    """Share of vowels in the response: cheap, deterministic, and it varies between samples."""
    return [sum(ch in "aeiou" for ch in r) / max(len(r), 1) for r in responses]
