"""`python -m spi_align.cli ...` runs the `spi` command (as the `spi` script does)."""

import sys

from spi_align.cli.main import main

sys.exit(main())
