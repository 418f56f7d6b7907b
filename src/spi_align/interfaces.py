"""The project's small interfaces: prompts, cost counters, candidates, results, scorers and searches.

Every search method takes a batch of prompts and returns one `SearchResult` per prompt; every scorer maps
(prompts, responses) to floats. Policies and value functions have their own modules (`policy/`, `values/`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Prompt:
    """One instruction, with an optional reference answer (used only by reference-based evaluators)."""

    id: str
    text: str
    reference: str | None = None


@dataclass
class Cost:
    """Compute spent by a method: what makes comparisons fair (equal generated-token budgets)."""

    tokens_generated: int = 0
    """Response tokens sampled from the policy, over all candidates."""
    policy_forwards: int = 0
    """Forward passes of the policy (prefill and decode steps)."""
    value_calls: int = 0
    """Candidates scored by value functions."""
    reward_calls: int = 0
    """Responses scored by the reward model or scorer that picks."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time by phase (prefill, decode, value, reward, ...)."""

    @contextmanager
    def timer(self, phase: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def add(self, other: Cost) -> None:
        self.tokens_generated += other.tokens_generated
        self.policy_forwards += other.policy_forwards
        self.value_calls += other.value_calls
        self.reward_calls += other.reward_calls
        for phase, secs in other.seconds.items():
            self.seconds[phase] = self.seconds.get(phase, 0.0) + secs

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_seconds": self.total_seconds}


@dataclass
class Candidate:
    """One response considered by a search."""

    text: str
    num_tokens: int
    finished: bool
    """True when the policy ended it (EOS); False when it was cut at max_new_tokens."""
    score: float | None = None
    """The picking score (reward model or scorer), when one was computed."""
    token_ids: list[int] = field(default_factory=list)
    """The response's policy tokens (what value functions are trained on)."""


@dataclass
class SearchResult:
    """What a search returns for one prompt: the chosen response and every candidate it scored."""

    prompt: Prompt
    chosen: Candidate
    candidates: list[Candidate]

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.prompt.id,
            "prompt": self.prompt.text,
            "response": self.chosen.text,
            "score": self.chosen.score,
            "candidates": [asdict(c) for c in self.candidates],
        }


@runtime_checkable
class Scorer(Protocol):
    """Batched scoring: one float per (prompt, response), higher is better."""

    name: str

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]: ...


@runtime_checkable
class Search(Protocol):
    """An inference-time method: a batch of prompts in, one result per prompt out, compute counted."""

    name: str

    def run(self, prompts: Sequence[Prompt], cost: Cost) -> list[SearchResult]: ...
