"""Pairwise LLM judge: the paper's Appendix C prompt, adapted to instructions, over any OpenAI-compatible endpoint.

Each pair (ours, theirs) is asked twice, once with ours as Response A and once as Response B, so that a judge's
preference for a position cancels out: a win needs both orders to prefer ours, a loss both to prefer theirs, and
a split is a tie. Malformed answers are retried by the client, then counted and reported; only a run of them in a
row (the endpoint answers garbage) is an error. The client (`judge_client.py`) handles transport and retries.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from typing import Literal

from spi_align.core.errors import SpiError
from spi_align.evaluation.judge_client import ChatClient, Endpoint, JudgeConfig, resolve_endpoint

__all__ = [
    "ChatClient",
    "Endpoint",
    "JudgeConfig",
    "Pair",
    "PairJudgement",
    "PairwiseJudge",
    "Tally",
    "combine",
    "judge_messages",
    "parse_verdict",
    "resolve_endpoint",
]

SYSTEM_PROMPT = (
    "Which of the following responses does a better job of following the given instruction: helpful, accurate and "
    "to the point, without unimportant or irrelevant details? Judge based on helpfulness, accuracy, and coherence."
)
USER_TEMPLATE = """**Instruction:**

{instruction}

**Response A:**

{a}

**Response B:**

{b}

FIRST provide a one-sentence comparison of the two responses, explaining which you prefer and why. SECOND, on a \
new line, state only "A" or "B" to indicate your choice. Your response should use the format:

**Comparison:** <one-sentence comparison and explanation>

**Preferred:** <"A" or "B">"""

Side = Literal["ours", "theirs"]
Outcome = Literal["win", "tie", "loss", "malformed"]


def judge_messages(instruction: str, a: str, b: str) -> list[dict[str, str]]:
    """The Appendix C prompt for one order: system prompt, then the instruction and Responses A and B."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": USER_TEMPLATE.format(instruction=instruction, a=a, b=b)},
    ]


_OPEN = r"[*_`\"'“”‘’\s(\[]*"
"""Markdown emphasis, quotes and brackets that may open a verdict."""
_PREFERRED = re.compile(rf"preferred\W*?\s*[:：]{_OPEN}(?:response{_OPEN})?([AB])(?![A-Za-z0-9])", re.IGNORECASE)
_BARE = re.compile(r"^[*_`\"'“”\s(\[]*(?:response\s+)?([AB])[*_`\"'“”\s)\].]*$", re.IGNORECASE)


def parse_verdict(text: str) -> Literal["A", "B"] | None:
    """The 'Preferred: A/B' verdict (also 'Preferred: Response B'; the last one when repeated), else a last line that
    is only 'A' or 'B'."""
    found = _PREFERRED.findall(text)
    if found:
        return "A" if found[-1].upper() == "A" else "B"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    match = _BARE.match(lines[-1]) if lines else None
    if match:
        return "A" if match.group(1).upper() == "A" else "B"
    return None


class _Stopped(Exception):
    """Another pair already ended the judging with an error: ask nothing more."""


@dataclass
class PairJudgement:
    """Both orders' verdicts on one prompt, and what they add up to."""

    id: str
    ours_first: Side | None
    """The preferred side when ours was Response A (None: malformed after retries)."""
    ours_second: Side | None
    """The preferred side when ours was Response B."""
    outcome: Outcome
    malformed_answers: int = 0
    """Unusable answers received for this pair, retried ones included."""
    identical: bool = False
    """Both responses were the same text: a tie without asking."""


def combine(first: Side | None, second: Side | None) -> Outcome:
    """Win when both orders prefer ours, loss when both prefer theirs, tie on a split, malformed if one is missing."""
    if first is None or second is None:
        return "malformed"
    if first == second:
        return "win" if first == "ours" else "loss"
    return "tie"


@dataclass
class Tally:
    """Outcome counts over pairs, with the paper's win + ½ tie rate over the pairs that got both verdicts."""

    win: int = 0
    tie: int = 0
    loss: int = 0
    malformed: int = 0
    identical: int = 0
    malformed_answers: int = 0

    def add(self, judgement: PairJudgement) -> None:
        setattr(self, judgement.outcome, getattr(self, judgement.outcome) + 1)
        self.identical += judgement.identical
        self.malformed_answers += judgement.malformed_answers

    @property
    def judged(self) -> int:
        return self.win + self.tie + self.loss

    @property
    def win_half_tie(self) -> float:
        return (self.win + 0.5 * self.tie) / self.judged if self.judged else float("nan")

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "judged": self.judged, "win_half_tie": self.win_half_tie}


@dataclass(frozen=True)
class Pair:
    """One prompt's two answers to compare."""

    id: str
    instruction: str
    ours: str
    theirs: str


class PairwiseJudge:
    """Judges pairs in both orders, a few at a time, and stops when the endpoint answers garbage repeatedly."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._streak = 0
        self._stop = threading.Event()

    def _order(self, instruction: str, a: str, b: str, ours_is: str) -> tuple[Side | None, int]:
        def parse(text: str) -> Side | None:
            verdict = parse_verdict(text)
            return None if verdict is None else ("ours" if verdict == ours_is else "theirs")

        if self._stop.is_set():
            raise _Stopped
        try:
            side, malformed = self.client.ask(judge_messages(instruction, a, b), parse)
        except SpiError:
            self._stop.set()
            raise
        with self._lock:
            self._streak = self._streak + 1 if side is None else 0
            if self._streak >= self.client.cfg.max_malformed_streak:
                self._stop.set()
                raise SpiError(
                    f"judge endpoint {self.client.endpoint.url} answered garbage {self._streak} times in a row "
                    f"(each after {self.client.cfg.retries} retries): not a chat-completions judge that follows "
                    "the format?"
                )
        return side, malformed  # type: ignore[return-value]

    def judge_pair(self, pair: Pair) -> PairJudgement:
        if pair.ours.strip() == pair.theirs.strip():
            return PairJudgement(pair.id, None, None, "tie", identical=True)
        first, bad_first = self._order(pair.instruction, pair.ours, pair.theirs, ours_is="A")
        second, bad_second = self._order(pair.instruction, pair.theirs, pair.ours, ours_is="B")
        return PairJudgement(pair.id, first, second, combine(first, second), bad_first + bad_second)

    def judge_many(
        self, pairs: Iterable[Pair], on_done: Callable[[PairJudgement], None] | None = None
    ) -> list[PairJudgement]:
        """Judge every pair; `on_done` sees each result as it comes (in the caller's thread), e.g. to save it."""
        pairs = list(pairs)
        results: dict[str, PairJudgement] = {}
        errors: list[BaseException] = []

        def collect(futures: Iterable[Future[PairJudgement]]) -> None:
            for future in futures:
                if future.cancelled():
                    continue
                error = future.exception()
                if isinstance(error, _Stopped):
                    continue
                if error is not None:
                    errors.append(error)
                    continue
                judgement = future.result()
                results[judgement.id] = judgement
                if on_done is not None:
                    on_done(judgement)

        with ThreadPoolExecutor(max_workers=self.client.cfg.concurrency) as pool:
            pending = {pool.submit(self.judge_pair, p) for p in pairs}
            while pending and not errors:
                done, pending = wait(pending, return_when=FIRST_EXCEPTION)
                collect(done)
            for future in pending:
                future.cancel()
            collect(wait(pending).done)  # pairs already in flight finish (bounded by timeouts) and are kept
        if errors:
            raise errors[0]
        return [results[p.id] for p in pairs]
