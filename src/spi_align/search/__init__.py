"""Inference-time methods behind one interface (`interfaces.Search`)."""

from spi_align.search.best_of_n import BestOfN, PlainSampling
from spi_align.search.draws import RepeatedDraws
from spi_align.search.tree import TreeSampling

__all__ = ["BestOfN", "PlainSampling", "RepeatedDraws", "TreeSampling"]
