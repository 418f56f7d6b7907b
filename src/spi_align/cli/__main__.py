"""`python -m spi_align.cli ...` runs the `spi` command (as the `spi` script does)."""

import sys

from spi_align.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
