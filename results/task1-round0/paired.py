"""Diversity keys compared on the same prompts: SPI-1 keyed by parent minus SPI-1 keyed by identical chunks.

Reads two finished runs' results.json (same prompts, same round 0, only spi.selection differs) and prints a
markdown table: evaluator and reward-model means, the paired evaluator difference with its 95% bootstrap interval
over prompts (scipy.stats.bootstrap, paired), and each key's win + ½ tie against best-of-16 with its interval.

    python results/task1-round0/paired.py runs/task1-round0 runs/task1-round0-parent
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import bootstrap


def interval(statistic, *samples: np.ndarray) -> tuple[float, float]:
    res = bootstrap(samples, statistic, paired=True, n_resamples=4000, random_state=0, method="percentile")
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def main(first: str, second: str) -> None:
    runs = [json.loads((Path(r) / "results.json").read_text())["results"] for r in (first, second)]
    bon = np.asarray(runs[0]["bon-16"]["evaluator"])
    keys = {"diversity (identical chunks)": runs[0]["spi-1"], "diversity-parent": runs[1]["spi-1"]}
    print(f"{len(bon)} prompts; evaluator = the held-out similarity labeller; BoN-16 evaluator mean {bon.mean():.3f}\n")
    print("| spi.selection | evaluator | reward model | win+½tie vs BoN-16 [95% CI] |")
    print("|---|---|---|---|")
    for name, res in keys.items():
        ev = np.asarray(res["evaluator"])
        wins = np.where(np.abs(ev - bon) <= 1e-6, 0.5, (ev > bon).astype(float))
        lo, hi = interval(lambda w, axis: w.mean(axis=axis), wins)
        print(f"| {name} | {ev.mean():.3f} | {np.mean(res['reward']):.3f} | {100 * wins.mean():.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] |")
    a, b = (np.asarray(r["evaluator"]) for r in keys.values())
    lo, hi = interval(lambda x, y, axis: (y - x).mean(axis=axis), a, b)
    print(f"\nParent key minus identical-chunk key, evaluator: {np.mean(b - a):+.4f} [{lo:+.4f}, {hi:+.4f}]")
    ra, rb = (np.asarray(r["reward"]) for r in keys.values())
    lo, hi = interval(lambda x, y, axis: (y - x).mean(axis=axis), ra, rb)
    print(f"Parent key minus identical-chunk key, reward model: {np.mean(rb - ra):+.4f} [{lo:+.4f}, {hi:+.4f}]")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
