"""The results table: evaluator means with bootstrap intervals, the paired difference from the baseline and the
win+½tie rate, each with its interval over resampled prompts."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from spi_align.experiment.report import (
    bootstrap_ci,
    mean_difference,
    paired_bootstrap_ci,
    results_table,
    win_tie_loss,
    win_tie_share,
)


def test_win_tie_loss_and_constant_bootstrap():
    assert win_tie_loss([1.0, 0.0, 0.5], [0.0, 0.0, 1.0]) == [1.0, 0.5, 0.0]
    assert bootstrap_ci([0.25] * 5) == pytest.approx((0.25, 0.25))  # every resample has the same mean


def test_intervals_are_scipys_paired_percentile_bootstrap():
    ours, theirs = [0.9, 0.1, 0.5, 0.7, 0.3, 0.8], [0.2, 0.4, 0.5, 0.1, 0.6, 0.3]

    def scipy_ci(data, statistic, paired):
        res = stats.bootstrap(
            data, statistic, paired=paired, n_resamples=2000, confidence_level=0.95, method="percentile",
            rng=np.random.default_rng(0),
        )  # fmt: skip
        return res.confidence_interval.low, res.confidence_interval.high

    mean = scipy_ci((np.array(ours),), np.mean, False)
    diff = scipy_ci((np.array(ours), np.array(theirs)), lambda a, b, axis: np.mean(a - b, axis=axis), True)
    wins = scipy_ci(
        (np.array(ours), np.array(theirs)),
        lambda a, b, axis: np.mean(np.where(np.abs(a - b) <= 1e-6, 0.5, (a > b).astype(float)), axis=axis),
        True,
    )
    assert bootstrap_ci(ours) == pytest.approx(mean, abs=1e-12)
    assert paired_bootstrap_ci(ours, theirs, mean_difference) == pytest.approx(diff, abs=1e-12)
    assert paired_bootstrap_ci(ours, theirs, win_tie_share) == pytest.approx(wins, abs=1e-12)
    assert bootstrap_ci([]) != bootstrap_ci([])  # NaN: nothing to resample
    assert bootstrap_ci([3.0]) == (3.0, 3.0)


def test_results_table_pairs_each_method_with_the_baseline():
    cost = {"tokens_generated": 10, "total_seconds": 2.0}
    results = {
        "bon-16": {"evaluator": [0.0, 0.0, 1.0, 0.2], "reward": [1.0], "cost": cost},
        "spi-1": {"evaluator": [1.0, 0.0, 0.5, 0.4], "reward": [2.0], "cost": cost},
        "same": {"evaluator": [0.0, 0.0, 1.0, 0.2], "reward": [0.0], "cost": cost},
    }
    headers, rows = results_table(results, "bon-16")
    assert headers[3] == "Δ vs bon-16 [95% CI]" and headers[4] == "win+½tie vs bon-16 [95% CI]"
    by_name = {row[0]: row for row in rows}
    assert by_name["bon-16"][3] == by_name["bon-16"][4] == "—"
    # spi-1 - bon-16 per prompt: +1, 0, -0.5, +0.2 -> mean +0.175; wins 1, ½, 0, 1 -> 62.5%
    assert by_name["spi-1"][3].startswith("+0.1750 [")
    assert by_name["spi-1"][4].startswith("62.5% [")
    lo, hi = (float(x.rstrip("%]")) for x in by_name["spi-1"][4].split("[")[1].split(", "))
    assert lo < 62.5 < hi
    # identical scores: no difference and every prompt a tie, with no spread
    assert by_name["same"][3] == "+0.0000 [+0.0000, +0.0000]" and by_name["same"][4] == "50.0% [50.0%, 50.0%]"
