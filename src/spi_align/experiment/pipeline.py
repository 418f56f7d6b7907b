"""Scoring a finished method's answers with the held-out evaluator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spi_align.core.interfaces import Scorer
from spi_align.core.records import Prompt
from spi_align.scoring.finite import finite_scores


def evaluate(records: Sequence[dict[str, Any]], prompts: Sequence[Prompt], evaluator: Scorer) -> list[float]:
    """The evaluator's score of each record's chosen response (SpiError if one is NaN or infinite)."""
    by_id = {p.id: p for p in prompts}
    responses = [r["response"] for r in records]
    return finite_scores(evaluator, evaluator.score([by_id[r["id"]] for r in records], responses), responses)
