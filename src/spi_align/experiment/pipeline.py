"""Scoring a finished method's answers with the held-out evaluator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from spi_align.interfaces import Prompt, Scorer


def evaluate(records: Sequence[dict[str, Any]], prompts: Sequence[Prompt], evaluator: Scorer) -> list[float]:
    """The evaluator's score of each record's chosen response (records and prompts in the same order)."""
    by_id = {p.id: p for p in prompts}
    return evaluator.score([by_id[r["id"]] for r in records], [r["response"] for r in records])
