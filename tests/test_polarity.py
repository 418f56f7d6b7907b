"""The TextBlob polarity scorer: a second sentiment lexicon, so one can guide and the other judge."""

from __future__ import annotations

from spi_align.core.interfaces import Scorer
from spi_align.core.records import Prompt
from spi_align.scoring import make_scorer


def test_polarity_sign_and_hand_checked_values():
    scorer = make_scorer("polarity")
    assert isinstance(scorer, Scorer) and scorer.name == "polarity"
    p = Prompt("p", "How was it?")
    good, bad, flat = scorer.score([p] * 3, ["This is a wonderful, helpful answer.", "Terrible and sad.", "A table."])
    # TextBlob's lexicon: 'wonderful' 1.0 and 'helpful' averaged to 1.0; 'terrible' -1.0 and 'sad' -0.5 -> -0.75
    assert (good, bad, flat) == (1.0, -0.75, 0.0)
