"""Timing methods in one process: every repeat runs every method, in alternating order, from the same seed.

Odd repeats run the methods in reverse order, so slow drift of the machine (heat, other load) falls on every
method alike. Each method starts from the same sampling seed in every repeat, so repeats do the same work.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from spi_align.core.records import Cost, Prompt

Runner = Callable[[Sequence[Prompt], Cost], object]
"""One method over one batch of prompts, spending into `cost`."""

PHASES = ("prefill", "decode", "value", "reward")


@dataclass
class Trial:
    """One timed run of one method over all the bench prompts."""

    method: str
    repeat: int
    position: int
    """Where in this repeat's order the method ran (0 = first)."""
    wall_s: float
    tokens: int
    phases: dict[str, float] = field(default_factory=dict)
    forward_tokens: int = 0
    """Tokens every model ran through a forward (`Cost.total_forward_tokens`): the compute, beside the tokens."""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s > 0 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        other = self.wall_s - sum(self.phases.values())
        return {**self.__dict__, "other_s": other, "tokens_per_s": self.tokens_per_s}


def run_once(
    key: str, runner: Runner, prompts: Sequence[Prompt], batch_size: int, reseed: Callable[[], None]
) -> tuple[float, Cost]:
    """Wall time and cost of `runner` over `prompts`, `batch_size` at a time, after reseeding."""
    cost = Cost()
    reseed()
    start = time.perf_counter()
    for first in range(0, len(prompts), batch_size):
        runner(prompts[first : first + batch_size], cost)
    return time.perf_counter() - start, cost


def repeat_order(keys: Sequence[str], repeat: int) -> list[str]:
    """Forward on even repeats, reversed on odd ones."""
    return list(keys) if repeat % 2 == 0 else list(reversed(keys))


def time_methods(
    methods: dict[str, Runner],
    prompts: Sequence[Prompt],
    batch_size: int,
    repeats: int,
    reseed: Callable[[], None],
    on_trial: Callable[[Trial], None] | None = None,
) -> list[Trial]:
    """Every method `repeats` times, alternating the order; one `Trial` per run."""
    trials = []
    for repeat in range(repeats):
        for position, key in enumerate(repeat_order(list(methods), repeat)):
            wall, cost = run_once(key, methods[key], prompts, batch_size, reseed)
            phases = {p: cost.seconds.get(p, 0.0) for p in PHASES}
            trial = Trial(key, repeat, position, wall, cost.tokens_generated, phases, cost.total_forward_tokens)
            trials.append(trial)
            if on_trial is not None:
                on_trial(trial)
    return trials


@dataclass
class Spread:
    """Median with min and max."""

    median: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        return cls(statistics.median(values), min(values), max(values))

    def to_dict(self) -> dict[str, float]:
        return dict(self.__dict__)


def by_method(trials: Sequence[Trial]) -> dict[str, list[Trial]]:
    """Trials grouped by method, each list ordered by repeat."""
    out: dict[str, list[Trial]] = {}
    for t in sorted(trials, key=lambda t: t.repeat):
        out.setdefault(t.method, []).append(t)
    return out


def paired_ratio(trials: Sequence[Trial], num: str, den: str, metric: str = "wall_s") -> Spread:
    """Per-repeat ratio num/den of `metric` (each repeat pairs the two runs made minutes apart), summarised."""
    grouped = by_method(trials)
    ratios = [getattr(a, metric) / getattr(b, metric) for a, b in zip(grouped[num], grouped[den], strict=True)]
    return Spread.of(ratios)


def summarise(trials: Sequence[Trial]) -> dict[str, dict[str, Any]]:
    """Per method: wall time, tokens, forward tokens, tokens/s and each phase as median [min, max] over repeats."""
    out = {}
    for key, runs in by_method(trials).items():
        phases = {p: Spread.of([r.phases.get(p, 0.0) for r in runs]).to_dict() for p in PHASES}
        other = Spread.of([r.wall_s - sum(r.phases.values()) for r in runs]).to_dict()
        out[key] = {
            "wall_s": Spread.of([r.wall_s for r in runs]).to_dict(),
            "tokens": Spread.of([r.tokens for r in runs]).to_dict(),
            "forward_tokens": Spread.of([r.forward_tokens for r in runs]).to_dict(),
            "tokens_per_s": Spread.of([r.tokens_per_s for r in runs]).to_dict(),
            "phases_s": {**phases, "other": other},
            "repeats": len(runs),
        }
    return out
