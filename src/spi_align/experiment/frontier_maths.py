"""The compute frontier's arithmetic: best-of-N estimated from n samples, and when SPI's training pays off.

**Best-of-N from n ≥ N samples (the unbiased subset estimator).** Best-of-N answers with the reward's argmax of N
fresh samples. Given n samples of one prompt, each with a reward r and a judge score j, the estimate of BoN-N's
expected judge score is the expectation over a uniformly random N-subset of the n samples of the judge score of the
subset's reward argmax, computed exactly from order statistics instead of by drawing subsets. Sort the samples by
reward, ascending; with distinct rewards the sample of rank i (1-based) is the subset's argmax exactly when it is
in the subset and the other N − 1 members come from the i − 1 below it:

    P(rank i is the argmax) = C(i − 1, N − 1) / C(n, N),        BoN-N ≈ Σ_i P(rank i) · j_(i).

Ties in the reward are handled exactly: the probability that the subset's best reward is a tie group's value is the
sum of its members' probabilities (whatever order the ties are ranked in), and best-of-N breaking the tie at random
picks each tied member alike, so the group's probability multiplies the mean judge score over the group. N = 1
gives the mean judge score of the n samples; N = n the judge score of the reward's argmax (averaged over its ties).
The same weights applied to the rewards give BoN-N's expected reward.

**Paired against best-of-N.** Another method's judge score o on the prompt wins against a sample of judge score j
with outcome w(o, j) = 1 if o > j, ½ on a tie (within 1e-6), 0 if o < j. The weights are the probabilities that each
sample is best-of-N's pick, so they give the expectation of any function of the pick's score, w(o, ·) included: o's
expected win+½tie against a best-of-N drawn from the n samples is

    P(o beats BoN-N) + ½ P(tie) = Σ_i P(rank i) · w(o, j_(i)),

against which a method distributed like BoN-N scores ½. Comparing o with BoN-N's expected score instead is biased,
in a direction set by each prompt's distribution: a draw of BoN-N itself beats that score with probability ½ only
where its median equals its mean (more often with a long lower tail, less often with a long upper one). The mean
difference o − BoN-N needs no such care: it is o minus the estimate.

**Training spread over queries.** SPI pays a one-off training cost T (rollouts, prefix states, fits) besides its
search cost c per query; over Q queries it costs c + T / Q per query. Against the cheapest best-of-N whose judge
mean reaches SPI's (cost b per query), SPI breaks even from Q* = ⌈T / (b − c)⌉ queries on; when b ≤ c it never
does, and when no best-of-N reaches SPI's judge mean there is no match to break even with.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from spi_align.experiment.report import win_tie_loss


def argmax_weights(n: int, size: int) -> np.ndarray:
    """P(the sample of ascending reward rank i is the reward argmax of a uniformly random `size`-subset of `n`
    distinct-reward samples), for i = 1 .. n: C(i − 1, size − 1) / C(n, size) (exact integers, divided once)."""
    if not 1 <= size <= n:
        raise ValueError(f"best-of-{size} needs 1 ≤ N ≤ n = {n} samples")
    total = math.comb(n, size)
    return np.array([math.comb(i - 1, size - 1) / total for i in range(1, n + 1)])


def best_of_n_estimate(rewards: Sequence[float], scores: Sequence[float], size: int) -> float:
    """Expected `scores` value of the `rewards` argmax of a uniformly random `size`-subset of the samples (the
    module's estimator): reward ties share their probability, so a tie group counts with its mean score."""
    r, s = np.asarray(rewards, dtype=float), np.asarray(scores, dtype=float)
    if r.shape != s.shape or r.ndim != 1:
        raise ValueError(f"one score per reward ({r.size} rewards, {s.size} scores)")
    order = np.argsort(r, kind="stable")
    r, s = r[order], s[order]
    weights = argmax_weights(r.size, size)
    # tie groups: runs of equal rewards in the sorted order; each member gets the group's mean score
    starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
    group_mean = np.add.reduceat(s, starts) / np.diff(np.r_[starts, r.size])
    group_weight = np.add.reduceat(weights, starts)
    return float(group_weight @ group_mean)


def win_against_best_of_n(
    ours: float, rewards: Sequence[float], scores: Sequence[float], size: int, tol: float = 1e-6
) -> float:
    """Expected win+½tie of the score `ours` against best-of-`size` drawn from these samples (the module's paired
    estimator): the outcome against each sample (1 / ½ within `tol` / 0) weighed as `best_of_n_estimate` weighs
    scores."""
    return best_of_n_estimate(rewards, win_tie_loss([ours] * len(scores), scores, tol), size)


def best_of_n_estimates(
    rewards: Sequence[Sequence[float]], scores: Sequence[Sequence[float]], size: int
) -> list[float]:
    """`best_of_n_estimate` of every prompt (one list of samples' rewards and scores per prompt)."""
    return [best_of_n_estimate(r, s, size) for r, s in zip(rewards, scores, strict=True)]


def per_query(search: float, training: float, queries: int) -> float:
    """Compute per query when a one-off `training` cost is spread over `queries` queries: search + training / Q."""
    if queries < 1:
        raise ValueError("queries must be at least 1")
    return search + training / queries


@dataclass(frozen=True)
class BreakEven:
    """Where SPI's per-query compute (search + training / Q) meets the cheapest best-of-N of at least its judge mean."""

    status: Literal["reached", "never", "not reached"]
    """'reached': from `queries` on SPI costs at most the matched best-of-N per query; 'never': its search alone
    costs at least as much as that best-of-N; 'not reached': no best-of-N of the list reaches SPI's judge mean."""
    size: int | None = None
    """N of the matched best-of-N (the smallest N whose judge mean is ≥ SPI's); None when 'not reached'."""
    queries: int | None = None
    """Q* = ⌈T / (b − c)⌉ (at least 1) when 'reached', else None."""

    def describe(self) -> str:
        """A table cell: '1,234 queries (BoN-16)', 'never (BoN-16)' or 'not reached'."""
        if self.status == "reached":
            return f"{self.queries:,} queries (BoN-{self.size})"
        return f"never (BoN-{self.size})" if self.status == "never" else "not reached"


def break_even(spi_mean: float, search: float, training: float, bon: Sequence[tuple[int, float, float]]) -> BreakEven:
    """The break-even of an SPI point (judge mean, search cost per query, one-off training cost) against `bon`,
    (N, judge mean, cost per query) for each N: matched with the smallest N whose judge mean is ≥ `spi_mean`."""
    if training < 0 or search < 0:
        raise ValueError("costs are never negative")
    matched = [(n, cost) for n, mean, cost in sorted(bon) if mean >= spi_mean]
    if not matched:
        return BreakEven("not reached")
    size, cost = matched[0]
    if cost <= search:
        return BreakEven("never", size)
    return BreakEven("reached", size, max(1, math.ceil(training / (cost - search))))
