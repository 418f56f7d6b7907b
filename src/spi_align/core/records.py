"""The data every layer passes around: `Prompt` in; `Candidate` and `SearchResult` out; `Cost`, the compute counted in
every result (generated tokens, and the tokens every transformer forward computed, by component, so equal compute
is checkable), with `billed()`, the cost being timed, for the code that runs forwards; and `guidance_terms()` /
`report_term`, through which value functions tell a search recording its tree (`SearchResult.trace`) the named
terms of the guidance they sum.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass(frozen=True)
class Prompt:
    """One instruction, with an optional reference answer (used only by reference-based evaluators)."""

    id: str
    text: str
    reference: str | None = None
    history: tuple[tuple[str, str], ...] = ()
    """Earlier turns of a conversation, (role, content) each, before `text` (its last user message); empty for a
    single instruction. Every model that reads a prompt (policies, value and reward models, DPO's data) reads the
    whole conversation, rendered by `hf.chat.render`."""

    def messages(self) -> list[dict[str, str]]:
        """The conversation in chat-template form: the earlier turns, then `text` as the user's message."""
        return [{"role": role, "content": content} for role, content in self.history] + [
            {"role": "user", "content": self.text}
        ]


FORWARD_COMPONENTS = ("policy_prefill", "policy_decode", "peek", "value", "reward")
"""What `Cost.forward_tokens` counts, by the model that ran the forward:

- policy_prefill: prompt tokens the policy encoded (its prefill), and in training the tokens of the teacher-forced
  passes over whole rollouts that prefix states are read from (`values/prefix_states.py`);
- policy_decode: sampled tokens fed back through the policy (a vLLM engine does not feed a request's last token);
- peek: end-of-turn tokens fed to the policy so that a reward head reads the state after it (`end_hidden` on
  rows cut at max_new_tokens, `peek_end_hidden` on partial responses, and the closed prefix states of training);
- value: separate value models (their own backbone, their own KV cache); value heads on the policy's states add 0;
- reward: every reward forward, on partial or finished responses: reward models scoring text, the implicit-reward
  pair (also when it guides weak-to-strong search), sentence encoders. A scorer that is no transformer (a lexicon,
  a user's function) counts 0.
"""

_BILLED: ContextVar[Cost | None] = ContextVar("spi_billed_cost", default=None)


@dataclass
class Cost:
    """Compute spent by a method: what makes comparisons fair (equal generated-token budgets, and the forward
    tokens of every model that ran, so that "equal compute" can be checked rather than assumed)."""

    tokens_generated: int = 0
    """Response tokens sampled from the policy, over all candidates."""
    policy_forwards: int = 0
    """Forward passes of the policy (prefill and decode steps)."""
    value_calls: int = 0
    """Candidates scored by value functions."""
    reward_calls: int = 0
    """Responses scored by the reward model or scorer that picks."""
    forward_tokens: dict[str, int] = field(default_factory=dict)
    """Tokens run through a transformer, by component (`FORWARD_COMPONENTS`). Counted padding-free: a token counts
    when a forward computed its position for real (attention mask 1); padding, masked rows of a batch (rows that
    ended still ride along in the policy's decode step) and tokens read from a KV cache or vLLM's prefix cache do
    not. So the count does not depend on how rows were batched, only on what each model had to encode."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time by phase (prefill, decode, value, reward, ...)."""
    tokens_by_prompt: list[int] | None = None
    """Tokens generated for each prompt of one search call (by its index in the batch), over all its candidates:
    counted only when set to a list of zeros before the call (`spi serve` bills each request its share)."""

    @contextmanager
    def timer(self, phase: str) -> Iterator[None]:
        """Time the block under `phase`, and bill to this cost the forwards that models inside it report
        (`billed()`: value models, reward models, scorers, which are not handed a cost)."""
        start = time.perf_counter()
        token = _BILLED.set(self)
        try:
            yield
        finally:
            _BILLED.reset(token)
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start

    def count_forward(self, component: str, tokens: int) -> None:
        """Add `tokens` forward tokens of `component` (one of `FORWARD_COMPONENTS`)."""
        if component not in FORWARD_COMPONENTS:
            raise ValueError(f"unknown forward component '{component}' (one of {', '.join(FORWARD_COMPONENTS)})")
        self.forward_tokens[component] = self.forward_tokens.get(component, 0) + int(tokens)

    def add(self, other: Cost) -> None:
        self.tokens_generated += other.tokens_generated
        self.policy_forwards += other.policy_forwards
        self.value_calls += other.value_calls
        self.reward_calls += other.reward_calls
        for component, tokens in other.forward_tokens.items():
            self.count_forward(component, tokens)
        for phase, secs in other.seconds.items():
            self.seconds[phase] = self.seconds.get(phase, 0.0) + secs

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    @property
    def total_forward_tokens(self) -> int:
        """Forward tokens of every component together."""
        return sum(self.forward_tokens.values())

    def count_by_prompt(self, counts: Sequence[int]) -> None:
        """Add tokens generated per prompt of the batch (a no-op unless `tokens_by_prompt` is being counted)."""
        if self.tokens_by_prompt is not None:
            self.tokens_by_prompt = [a + int(b) for a, b in zip(self.tokens_by_prompt, counts, strict=True)]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["tokens_by_prompt"] is None:
            del data["tokens_by_prompt"]
        return {**data, "total_seconds": self.total_seconds, "total_forward_tokens": self.total_forward_tokens}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Cost:
        """The cost `to_dict` wrote; derived totals are recomputed, and fields a file lacks (files written before
        `forward_tokens` existed) start at zero."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def billed() -> Cost | None:
    """The cost being timed now (inside `Cost.timer`), which models that are not handed a cost bill their forward
    tokens to; None outside any timer (training, evaluation: nothing is billed)."""
    return _BILLED.get()


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
    trace: dict[str, Any] | None = None
    """The tree the search walked for this prompt (`spi_align.search.trace`: one entry per chunk, columns of ids
    and floats), when it recorded one; None otherwise (plain sampling, best-of-N: the candidates are the record)."""

    def to_record(self) -> dict[str, Any]:
        record = {
            "id": self.prompt.id,
            "prompt": self.prompt.text,
            "response": self.chosen.text,
            "score": self.chosen.score,
            "candidates": [asdict(c) for c in self.candidates],
        }
        return record if self.trace is None else {**record, "trace": self.trace}


_TERMS: ContextVar[dict[str, tuple[float, Any]] | None] = ContextVar("spi_guidance_terms", default=None)


@contextmanager
def guidance_terms() -> Iterator[dict[str, tuple[float, Any]]]:
    """Collect the named terms of the guidance computed inside the block, as the value functions report them
    (`report_term`): name -> (weight, the term's unweighted values, one per row). A search recording its tree opens
    this around its guidance call; value functions that sum several terms (V_0, V_1, the reward on partial
    responses) report each, so the trace shows every value function's say, at no extra forward pass."""
    terms: dict[str, tuple[float, Any]] = {}
    token = _TERMS.set(terms)
    try:
        yield terms
    finally:
        _TERMS.reset(token)


def reporting_terms() -> bool:
    """True inside `guidance_terms()`: a value function that would compute a term only for the trace (a fused sum
    taken apart) computes it only then."""
    return _TERMS.get() is not None


def report_term(name: str, weight: float, values: Any) -> None:
    """Report one named term of the guidance being computed (its weight and its unweighted values, one per row) to
    the `guidance_terms()` block around it; a no-op outside one."""
    terms = _TERMS.get()
    if terms is not None:
        terms[name] = (float(weight), values)
