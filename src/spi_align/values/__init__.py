"""Value functions V(x, y_{1:t}) (eq. 12) and their sum Σ_i γ V_i / β_i that guides the search (eq. 13)."""

from spi_align.values.heads import HeadStack, ValueHead

__all__ = ["HeadStack", "ValueHead"]
