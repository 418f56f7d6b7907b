"""Policies: a frozen causal LM that samples, continues partial responses by chunks, and exposes features."""

from spi_align.policy.hf import HFPolicy, load_policy
from spi_align.policy.rows import Rows

__all__ = ["HFPolicy", "Rows", "load_policy"]
