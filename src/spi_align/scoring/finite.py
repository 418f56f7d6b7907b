"""Scores must be finite: a NaN or infinite score would pick answers (and train values) silently.

Every scoring path checks what a scorer returns here: a user's function (`CallableScorer`, wherever it is used),
every candidate scored to pick an answer (`search/candidates.py`, text or rows) and every evaluation
(`experiment/pipeline.py`). The error is one line naming the scorer and the response.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from spi_align.core.errors import SpiError


def scorer_name(scorer: Any) -> str:
    """The name a scorer goes by in messages (its `name`, else its class)."""
    return str(getattr(scorer, "name", None) or type(scorer).__name__)


def finite_scores(scorer: Any, scores: Iterable[float], responses: Iterable[str] | None = None) -> list[float]:
    """`scores` as floats; SpiError naming `scorer` (and the response, when given) if one is NaN or infinite."""
    values = [float(s) for s in scores]
    for i, value in enumerate(values):
        if not math.isfinite(value):
            texts = list(responses) if responses is not None else []
            what = f" for response {i} {texts[i][:40]!r}" if i < len(texts) else f" for response {i}"
            raise SpiError(f"scorer '{scorer_name(scorer)}' returned {value}{what}: scores must be finite numbers")
    return values
