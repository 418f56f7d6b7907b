"""compare.py OURS THEIRS: every method of two runs' results.json on the same eval prompts, paired by prompt.

For each method both runs evaluated (and each SPI-k of OURS against each SPI-k of THEIRS), the judge's and the
reward model's mean difference OURS − THEIRS and OURS' win+½tie on the judge, 95% intervals with the prompts
resampled (`report.paired_cells`). Used to put SPI-2 after round 1 as draws (runs/t1d) beside SPI-2 after round 1 as
the beam's own candidates (../quality-task1-rounds). Reads JSON only."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from spi_align.experiment.report import markdown_table, paired_cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ours", type=Path, help="results.json of the run compared")
    parser.add_argument("theirs", type=Path, help="results.json of the run it is compared with")
    args = parser.parse_args()
    ours = json.loads(args.ours.read_text())["results"]
    theirs = json.loads(args.theirs.read_text())["results"]
    spi = [name for name in ours if re.fullmatch(r"spi-\d+", name)]
    pairs = [(name, name) for name in ours if name in theirs]
    pairs += [(a, b) for a in spi for b in theirs if re.fullmatch(r"spi-\d+", b) and a != b]
    rows = []
    for a, b in pairs:
        if len(ours[a]["evaluator"]) != len(theirs[b]["evaluator"]):
            raise SystemExit(f"compare.py: {a} and {b} were evaluated on different numbers of prompts")
        judge_delta, win = paired_cells(ours[a]["evaluator"], theirs[b]["evaluator"])
        reward_delta, _ = paired_cells(ours[a]["reward"], theirs[b]["reward"])
        rows.append([a, b, judge_delta, win, reward_delta])
    headers = ["ours", "theirs", "judge Δ [95% CI]", "win+½tie [95% CI]", "reward model Δ [95% CI]"]
    print(markdown_table(headers, rows), end="")


if __name__ == "__main__":
    main()
