"""Stand-in scorers shared by the tests: deterministic, cheap, and different enough between samples to pick.

Classes are imported (`from mocks.scorers import CountScorer`); the functions can also be loaded by path as a
configured scorer, 'tests/mocks/scorers.py:function'.
"""

from __future__ import annotations

from collections.abc import Sequence


def vowel_share(prompts, responses):
    """Share of vowels in the response: cheap, deterministic, and it varies between samples."""
    return [sum(ch in "aeiou" for ch in r) / max(len(r), 1) for r in responses]


def nan_for_vowels(prompts, responses):
    """A broken scorer: NaN for every response that has a vowel (a user's function that divides by zero)."""
    return [float("nan") if any(ch in "aeiou" for ch in r) else 0.0 for r in responses]


class CountScorer:
    """How many response characters are in `letters`."""

    name = "count"

    def __init__(self, letters: str = "e") -> None:
        self.letters = letters

    def score(self, prompts: Sequence, responses: Sequence[str]) -> list[float]:
        return [float(sum(ch in self.letters for ch in r)) for r in responses]


class LengthScorer:
    """Characters of the response, times `sign` (-1: the shortest response scores best)."""

    name = "length"

    def __init__(self, sign: float = 1.0) -> None:
        self.sign = sign

    def score(self, prompts: Sequence, responses: Sequence[str]) -> list[float]:
        return [self.sign * len(r) for r in responses]


class FixedScorer:
    """Returns the given scores in order, whatever it is asked (for NaN / inf checks)."""

    def __init__(self, scores: Sequence[float], name: str = "fixed") -> None:
        self.scores, self.name = list(scores), name

    def score(self, prompts: Sequence, responses: Sequence[str]) -> list[float]:
        return [self.scores[i % len(self.scores)] for i in range(len(responses))]
