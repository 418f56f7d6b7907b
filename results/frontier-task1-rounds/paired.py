"""paired.py RUN: each SPI point of a finished frontier run against every best-of-N of it, paired by prompt.

The report's frontier shows each SPI point against the best-of-N of at least its cost; this prints the pairs at
every N from the run's `frontier.json` (`paired`: SPI − BoN-N in judge score, and SPI's expected win+½tie against a
best-of-N drawn from the run's samples, each with its 95% interval, prompts resampled; see
`spi_align/experiment/frontier_maths.py`). Reads JSON only."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from spi_align.experiment.frontier import paired_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the run folder (runs/t1f)")
    args = parser.parse_args()
    data = json.loads((args.run / "frontier.json").read_text())
    if any("paired" not in s for s in data["spi"]):
        sys.exit(f"paired.py: {args.run}/frontier.json has no paired figures (written before they were added)")
    print(paired_table(data), end="")


if __name__ == "__main__":
    main()
