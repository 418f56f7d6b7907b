"""spread.py ROLLOUTS.jsonl ...: how much within-prompt spread a round's rollouts give a value fit to learn from.

Per rollouts file (a run's `rollouts-k.jsonl`), means over prompts of: the candidates kept, the distinct prefixes of
16 / 32 / 48 tokens among candidates still unfinished there (what a value is fitted and ranked on), and the
within-prompt standard deviation of the candidates' rewards (nan where they are scored later, as round 0's); and the
share of prompts with at least three distinct prefixes at 16 tokens (the held-out ranking's minimum). Reads JSON
only: no model, no torch."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

LENGTHS = (16, 32, 48)


def spread(path: Path) -> dict[str, float]:
    """The means above for one rollouts file."""
    kept, stds, rankable = [], [], []
    distinct: dict[int, list[int]] = {t: [] for t in LENGTHS}
    for line in path.read_text().splitlines():
        candidates = json.loads(line)["candidates"]
        kept.append(len(candidates))
        scores = [c["score"] for c in candidates]
        stds.append(float(np.std(scores)) if None not in scores else float("nan"))  # round 0's are scored later
        for t in LENGTHS:
            prefixes = {tuple(c["token_ids"][:t]) for c in candidates if len(c["token_ids"]) > t}
            distinct[t].append(len(prefixes))
        rankable.append(distinct[16][-1] >= 3)
    row = {"prompts": float(len(kept)), "candidates": float(np.mean(kept)), "reward_std": float(np.mean(stds))}
    row |= {f"distinct_at_{t}": float(np.mean(distinct[t])) for t in LENGTHS}
    return row | {"share_rankable_at_16": float(np.mean(rankable))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rollouts", type=Path, nargs="+")
    args = parser.parse_args()
    rows = {str(path): spread(path) for path in args.rollouts}
    headers = ["rollouts", *next(iter(rows.values()))]
    print("| " + " | ".join(headers) + " |\n|" + "---|" * len(headers))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{v:.3g}" for v in row.values()) + " |")


if __name__ == "__main__":
    main()
