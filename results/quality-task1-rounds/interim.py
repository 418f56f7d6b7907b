"""interim.py RUN: the judge's figures of the methods a stopped `spi run` on task 1's 200 eval prompts has finished.

`spi run` writes its report only when every method is evaluated; a run stopped at a session's end has finished some
(`eval-<method>.jsonl` with all 200 records). This scores their chosen responses with the run's evaluator (the
similarity judge) and prints, per method, the judge mean [95% CI], and against best-of-16 the paired difference and
win+½tie [95% CI], with the report's own functions (the same numbers the report will show)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from spi_align.config import DataConfig
from spi_align.data.prompts import load_prompts
from spi_align.experiment.pipeline import evaluate
from spi_align.experiment.report import bootstrap_ci, markdown_table, paired_cells
from spi_align.scoring import make_scorer

METHODS = ("sample", "bon-16", "spi-1", "spi-2", "spi-3")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="the run folder (runs/t1r)")
    args = parser.parse_args()
    prompts = load_prompts(DataConfig(prompts="default", split="eval", limit=200))
    judge = make_scorer("similarity")
    scores: dict[str, list[float]] = {}
    for method in METHODS:
        path = args.run / f"eval-{method}.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
        if len(records) == len(prompts):
            order = {p.id: i for i, p in enumerate(prompts)}
            scores[method] = evaluate(sorted(records, key=lambda r: order[r["id"]]), prompts, judge)
    base = scores["bon-16"]
    rows = []
    for method, ev in scores.items():
        lo, hi = bootstrap_ci(ev)
        delta = win = "—"
        if method != "bon-16":
            delta, win = paired_cells(ev, base)
        rows.append([method, f"{sum(ev) / len(ev):.4f} [{lo:.4f}, {hi:.4f}]", delta, win])
    headers = ["method", "judge [95% CI]", "Δ vs bon-16 [95% CI]", "win+½tie vs bon-16 [95% CI]"]
    print(markdown_table(headers, rows))


if __name__ == "__main__":
    main()
