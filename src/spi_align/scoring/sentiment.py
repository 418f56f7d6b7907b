"""Lexicon sentiment (VADER): the compound score of the response, in [-1, 1]. Fast, CPU only, no model."""

from __future__ import annotations

from collections.abc import Sequence

from spi_align.interfaces import Prompt


class Sentiment:
    """Scores how positive a response reads (VADER compound score); the prompt is ignored."""

    name = "sentiment"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """One compound score per response."""
        return [float(self._analyzer.polarity_scores(text)["compound"]) for text in responses]
