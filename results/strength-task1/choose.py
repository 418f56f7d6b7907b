"""The search strength chosen on training prompts: each sweep cell's SPI-1 against the default cell's, by the rule in
sweep.yaml (the default is kept unless a setting beats it on the labeller with a paired 95% interval above 0).

Reads the finished sweep (its cells.json and each cell's results.json and eval-spi-1.cost.json) and prints a markdown
table: the labeller (the sweep's evaluator: on task 1 the similarity evaluator the reward model learns from, on
task 2 VADER, which also guides) and reward means, win + ½ tie against best-of-16 and the paired labeller difference
against the default, each with its 95% bootstrap interval over prompts (scipy.stats.bootstrap, paired, percentile),
and generated / forward tokens per prompt.

    python results/strength-task1/choose.py runs/sweeps/strength-task1
    python results/strength-task1/choose.py runs/sweeps/strength-task2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import yaml
from scipy.stats import bootstrap


def interval(statistic, *samples: np.ndarray) -> tuple[float, float]:
    res = bootstrap(samples, statistic, paired=True, n_resamples=4000, random_state=0, method="percentile")
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def main(folder: str) -> None:
    sweep = Path(folder)
    cells = json.loads((sweep / "cells.json").read_text())["cells"]
    rows = []
    for cell in cells:
        path = sweep / "cells" / cell["key"]
        results = json.loads((path / "results.json").read_text())["results"]
        cost = json.loads((path / "eval-spi-1.cost.json").read_text())["cost"]
        rows.append((cell["settings"], results, cost))
    default = np.asarray(rows[0][1]["spi-1"]["evaluator"])
    bon = np.asarray(rows[0][1]["bon-16"]["evaluator"])
    n = len(bon)
    config = yaml.safe_load((sweep / "cells" / cells[0]["key"] / "config.yaml").read_text())
    labeller = f"the {config['evaluator']} evaluator"
    print(f"{n} select prompts; labeller = {labeller}; best-of-16 labeller mean {bon.mean():.3f}\n")
    print(
        "| setting | labeller | reward | win+½tie vs BoN-16 [95% CI] | minus default [95% CI] "
        "| gen. tok / prompt | fwd tok / prompt |"
    )
    print("|---|---|---|---|---|---|---|")
    bon_cost = json.loads((sweep / "cells" / cells[0]["key"] / "eval-bon-16.cost.json").read_text())["cost"]
    print(
        f"| best-of-16 | {bon.mean():.3f} | {np.mean(rows[0][1]['bon-16']['reward']):.3f} | — | — | "
        f"{bon_cost['tokens_generated'] / n:,.0f} | {sum(bon_cost['forward_tokens'].values()) / n:,.0f} |"
    )
    chosen, best = 0, 0.0
    for i, (settings, results, cost) in enumerate(rows):
        ev = np.asarray(results["spi-1"]["evaluator"])
        bon_i = np.asarray(results["bon-16"]["evaluator"])
        wins = np.where(np.abs(ev - bon_i) <= 1e-6, 0.5, (ev > bon_i).astype(float))
        lo, hi = interval(lambda w, axis: w.mean(axis=axis), wins)
        if i:
            dlo, dhi = interval(lambda x, y, axis: (y - x).mean(axis=axis), default, ev)
            diff = f"{np.mean(ev - default):+.3f} [{dlo:+.3f}, {dhi:+.3f}]"
            if dlo > 0 and np.mean(ev - default) > best:
                chosen, best = i, float(np.mean(ev - default))
        else:
            diff = "(default)"
        label = ", ".join(f"{k.removeprefix('spi.')}={v}" for k, v in settings.items())
        forward = sum(cost["forward_tokens"].values())
        print(
            f"| {label} | {ev.mean():.3f} | {np.mean(results['spi-1']['reward']):.3f} | "
            f"{100 * wins.mean():.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] | {diff} | "
            f"{cost['tokens_generated'] / n:,.0f} | {forward / n:,.0f} |"
        )
    label = ", ".join(f"{k}={v}" for k, v in rows[chosen][0].items())
    print(f"\nChosen by the rule: {label}" + (" (the default: no setting beat it)" if chosen == 0 else ""))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/sweeps/strength-task1")
