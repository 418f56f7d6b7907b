"""paired.py RUN: each SPI-k of a finished frontier run against every best-of-N of its frontier, paired by prompt.

The frontier table gives each point's mean and interval alone; on one sample set the prompts pair, so this prints
SPI-k − BoN-N in judge score (mean [95% CI], prompts resampled together) and SPI-k's win+½tie rate against it (against
BoN-N's expected score on the prompt, not against one draw of it), from
the run's `results.json` (SPI-k's judge score per eval prompt) and `frontier.json` (BoN-N's unbiased estimate per
eval prompt, `judge_by_prompt`, in the same prompt order). Reads JSON only."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from spi_align.experiment.report import markdown_table, paired_cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the run folder (runs/t1f)")
    args = parser.parse_args()
    results = json.loads((args.run / "results.json").read_text())["results"]
    bon = json.loads((args.run / "frontier.json").read_text())["bon"]
    rows = []
    for name, res in results.items():
        if re.fullmatch(r"spi-\d+", name):
            for point in bon:
                delta, win = paired_cells(res["evaluator"], point["judge_by_prompt"])
                rows.append([name, f"bon-{point['size']}", delta, win])
    print(markdown_table(["SPI", "best-of-N", "judge Δ [95% CI]", "win+½tie [95% CI]"], rows), end="")


if __name__ == "__main__":
    main()
