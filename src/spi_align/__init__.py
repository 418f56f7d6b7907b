"""spi_align: inference-time successive policy iterations over a frozen language model."""

__version__ = "0.1.0"
