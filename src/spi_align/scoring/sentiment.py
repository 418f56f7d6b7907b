"""Lexicon sentiment: VADER's compound score ("sentiment") or TextBlob's polarity ("polarity") of the response,
both in [-1, 1]. Two different lexicons and rules, so one can guide while the other judges. Fast, CPU only, and no
transformer: they add no forward tokens to a search's cost.
"""

from __future__ import annotations

from collections.abc import Sequence

from spi_align.core.records import Prompt


class Sentiment:
    """Scores how positive a response reads (VADER compound score); the prompt is ignored."""

    name = "sentiment"

    def __init__(self) -> None:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        self._analyzer = SentimentIntensityAnalyzer()

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """One compound score per response."""
        return [float(self._analyzer.polarity_scores(text)["compound"]) for text in responses]


class Polarity:
    """Scores how positive a response reads by TextBlob's pattern lexicon (polarity); the prompt is ignored."""

    name = "polarity"

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]:
        """One polarity per response."""
        from textblob import TextBlob

        return [float(TextBlob(text).sentiment.polarity) for text in responses]
