"""Inference-time methods behind one interface (`interfaces.Search`)."""

from spi_align.search.best_of_n import BestOfN, PlainSampling

__all__ = ["BestOfN", "PlainSampling"]
