"""Scorers: batched (prompts, responses) -> floats, higher is better. `make_scorer` turns a spec into one.

Heavy libraries load only when a scorer that needs them is made.
"""

from __future__ import annotations

from pathlib import Path

from spi_align.errors import SpiError
from spi_align.interfaces import Scorer

CHOICES = "'similarity', 'sentiment', 'polarity', a reward-model directory (with spi_reward.json) or 'module:function'"


def make_scorer(spec: str, device: str = "cpu") -> Scorer:
    """'similarity', 'sentiment' (VADER), 'polarity' (TextBlob), a reward-model directory, or 'module:function'."""
    if spec == "similarity":
        from spi_align.scoring.similarity import ReferenceSimilarity

        return ReferenceSimilarity(device=device)
    if spec == "sentiment":
        from spi_align.scoring.sentiment import Sentiment

        return Sentiment()
    if spec == "polarity":
        from spi_align.scoring.sentiment import Polarity

        return Polarity()
    path = Path(spec).expanduser()
    if path.is_dir():
        from spi_align.scoring.reward_model import SPEC_FILE, RewardModelScorer

        if not (path / SPEC_FILE).is_file():
            raise SpiError(f"scorer '{spec}': directory has no {SPEC_FILE}, so it is not a reward model")
        return RewardModelScorer.load(path, device=device)
    if ":" in spec:
        from spi_align.scoring.callable import CallableScorer

        return CallableScorer(spec)
    raise SpiError(f"unknown scorer '{spec}': use {CHOICES}")


__all__ = ["CHOICES", "make_scorer"]
