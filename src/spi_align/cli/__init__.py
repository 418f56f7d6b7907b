"""The `spi` command: argument parsing (`main`) and one function per subcommand (`commands`)."""

from spi_align.cli.main import main

__all__ = ["main"]
