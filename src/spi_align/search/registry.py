"""The registry of inference-time methods: a name in, a `Search` out.

Every command that runs methods (`spi generate`, `spi run`, `spi bench`, the sweep, `spi serve`) asks this
registry, so adding a method is one module plus one `@register(...)`. A method is registered under a name pattern
(a regular expression whose groups are its parameters, e.g. `bon-(\\d+)`) with a function that lists the names it
offers in a given context. Built in: `sample`, `bon-N` (best-of-N by the reward), `spi-k` (chunk beam search
guided by V_0..V_{k-1}); the paper's baselines register themselves in `experiment/baselines.py`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from spi_align.config import SPIConfig
from spi_align.core.errors import SpiError
from spi_align.core.interfaces import Policy, Scorer, Search, ValueFunction


@dataclass
class MethodContext:
    """What methods are built from: the policy, the reward that picks, the beam shape, and the guidance."""

    policy: Policy
    reward: Scorer | None
    spi: SPIConfig
    rounds: int = 0
    """Trained rounds: `spi-1` .. `spi-rounds` are offered."""
    guidance: Callable[[int], ValueFunction | None] = lambda k: None
    """k -> the guidance of π_k (Σ_{i<k} γ V_i/β_i, plus any reward on partial text)."""
    extras: dict[str, Any] = field(default_factory=dict)
    """Whatever registered methods outside this module need (e.g. 'baselines': the run's baseline provider)."""

    @property
    def candidates(self) -> int:
        """W·K: candidates per prompt of every compute-matched method."""
        return self.spi.candidates

    def needs_reward(self, name: str) -> Scorer:
        if self.reward is None:
            raise SpiError(f"method '{name}' needs a reward to pick with")
        return self.reward


@dataclass(frozen=True)
class Method:
    pattern: re.Pattern[str]
    build: Callable[[re.Match[str], MethodContext], Search]
    names: Callable[[MethodContext], list[str]]
    description: str


METHODS: list[Method] = []


def register(
    pattern: str, names: Callable[[MethodContext], list[str]], description: str
) -> Callable[[Callable[[re.Match[str], MethodContext], Search]], Callable[[re.Match[str], MethodContext], Search]]:
    """Register a method builder under a full-match name pattern; `names(ctx)` lists what it offers there."""

    def wrap(
        build: Callable[[re.Match[str], MethodContext], Search],
    ) -> Callable[[re.Match[str], MethodContext], Search]:
        METHODS.append(Method(re.compile(pattern), build, names, description))
        return build

    return wrap


def method_names(ctx: MethodContext) -> list[str]:
    """Every method name available in `ctx`, in registration order."""
    return [name for method in METHODS for name in method.names(ctx)]


def build_method(name: str, ctx: MethodContext) -> Search:
    """The search called `name` (e.g. 'sample', 'bon-16', 'spi-2'); one clear error for an unknown name."""
    for method in METHODS:
        match = method.pattern.fullmatch(name)
        if match:
            return method.build(match, ctx)
    offered = ", ".join(method_names(ctx)) or "none"
    raise SpiError(f"unknown method '{name}' (available here: {offered})")


@register("sample", lambda ctx: ["sample"], "one plain sample from the base policy")
def _sample(match: re.Match[str], ctx: MethodContext) -> Search:
    from spi_align.search.best_of_n import PlainSampling

    return PlainSampling(ctx.policy)


@register(r"bon-(\d+)", lambda ctx: [f"bon-{ctx.candidates}"] if ctx.reward else [], "best-of-N by the reward")
def _best_of_n(match: re.Match[str], ctx: MethodContext) -> Search:
    from spi_align.search.best_of_n import BestOfN

    n = int(match.group(1))
    if n < 1:
        raise SpiError(f"method '{match.group(0)}': N must be at least 1")
    return BestOfN(ctx.policy, ctx.needs_reward(match.group(0)), n)


SPI_NAME_PATTERN = r"spi-(\d+)"
"""The name of SPI-k at the run's own beam budget: 'spi-k'."""
SPI_BUDGET_NAME_PATTERN = r"spi-(\d+)-w(\d+)k(\d+)l(\d+)"
"""The name of SPI-k at another beam budget W, K, L (the compute frontier's points): 'spi-k-wWkKlL'."""


def spi_name(k: int, budget: tuple[int, int, int] | None = None) -> str:
    """'spi-k', or 'spi-k-wWkKlL' for SPI-k at beam budget (W, K, L)."""
    if budget is None:
        return f"spi-{k}"
    width, successors, chunk = budget
    return f"spi-{k}-w{width}k{successors}l{chunk}"


def parse_spi_name(name: str) -> tuple[int, tuple[int, int, int] | None] | None:
    """(k, (W, K, L) or None at the run's own budget) of an SPI method name; None for any other method."""
    if match := re.fullmatch(SPI_NAME_PATTERN, name):
        return int(match.group(1)), None
    if match := re.fullmatch(SPI_BUDGET_NAME_PATTERN, name):
        k, width, successors, chunk = (int(g) for g in match.groups())
        return k, (width, successors, chunk)
    return None


def spi_rounds(names: list[str]) -> list[tuple[int, str]]:
    """(k, name) of the 'spi-k' names (the run's own budget) among `names`, in round order."""
    return sorted((parsed[0], name) for name in names if (parsed := parse_spi_name(name)) and parsed[1] is None)


@register(
    SPI_NAME_PATTERN,
    lambda ctx: [spi_name(k) for k in range(1, ctx.rounds + 1)] if ctx.reward else [],
    "chunk beam search guided by the first k value functions (π_k)",
)
def _spi(match: re.Match[str], ctx: MethodContext) -> Search:
    from spi_align.search.beam import ChunkBeamSearch

    name, k = match.group(0), int(match.group(1))
    if not 1 <= k <= ctx.rounds:
        raise SpiError(f"method '{name}': only spi-1 .. spi-{ctx.rounds} are trained here")
    return ChunkBeamSearch.from_config(ctx.policy, ctx.guidance(k), ctx.needs_reward(name), ctx.spi, name)
