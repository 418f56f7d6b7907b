"""Pairwise LLM judge: the paper's Appendix C prompt, adapted to instructions, over any OpenAI-compatible endpoint.

Each pair (ours, theirs) is asked twice, once with ours as Response A and once as Response B, so that a judge's
preference for a position cancels out: a win needs both orders to prefer ours, a loss both to prefer theirs, and
a split is a tie. Transport failures (refused connection, timeout, HTTP 429/5xx) are retried a bounded number of
times and then end the whole judging with one `SpiError` line; a malformed answer (a body that is not JSON, no
choices, a verdict that cannot be read) is retried too, then counted and reported, and only a run of them in a row
is an error (the endpoint answers garbage).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field
from typing import Literal

from pydantic import Field

from spi_align.config import Section
from spi_align.errors import SpiError

ENV_BASE_URL = "SPI_JUDGE_BASE_URL"
ENV_MODEL = "SPI_JUDGE_MODEL"
ENV_KEYS = ("SPI_JUDGE_API_KEY", "OPENAI_API_KEY")
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"

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


class JudgeConfig(Section):
    base_url: str | None = None
    """Endpoint root, e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1 (a vLLM or llama.cpp server).
    None: $SPI_JUDGE_BASE_URL, then $OPENAI_BASE_URL, then OpenAI's."""
    model: str | None = None
    """Judge model name (None: $SPI_JUDGE_MODEL, then gpt-4o-mini, the paper's TL;DR judge)."""
    api_key_env: str | None = None
    """Name of the environment variable holding the API key (None: $SPI_JUDGE_API_KEY, then $OPENAI_API_KEY).
    Keys are read from the environment only, never from config files. A local endpoint may need none."""
    timeout: float = Field(60.0, gt=0)
    """Seconds to wait for one answer."""
    retries: int = Field(2, ge=0)
    """Extra attempts per request after a transport failure or a malformed answer."""
    backoff: float = Field(1.0, ge=0)
    """Seconds before the first retry; doubled at each further one."""
    max_tokens: int = Field(256, gt=0)
    """Longest judge answer, in tokens."""
    temperature: float = Field(0.0, ge=0)
    """Judge sampling temperature (0 = as deterministic as the endpoint allows)."""
    concurrency: int = Field(4, gt=0)
    """Pairs judged at once."""
    max_malformed_streak: int = Field(5, gt=0)
    """Stop with an error when this many requests in a row end malformed after their retries."""


@dataclass(frozen=True)
class Endpoint:
    """Where the judge lives: resolved from the config, then the environment."""

    base_url: str
    model: str
    api_key: str | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return self.base_url.rstrip("/") + "/chat/completions"


def resolve_endpoint(cfg: JudgeConfig, env: Mapping[str, str] | None = None) -> Endpoint:
    """Config values first, then environment variables, then OpenAI's defaults."""
    env = os.environ if env is None else env
    base_url = cfg.base_url or env.get(ENV_BASE_URL) or env.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL
    if not base_url.startswith(("http://", "https://")):
        raise SpiError(f"judge base_url must start with http:// or https:// (got '{base_url}')")
    names = (cfg.api_key_env,) if cfg.api_key_env else ENV_KEYS
    key = next((env[n] for n in names if env.get(n)), None)
    if cfg.api_key_env and key is None:
        raise SpiError(f"judge: environment variable {cfg.api_key_env} (api_key_env) is not set")
    return Endpoint(base_url=base_url, model=cfg.model or env.get(ENV_MODEL) or DEFAULT_MODEL, api_key=key)


def judge_messages(instruction: str, a: str, b: str) -> list[dict[str, str]]:
    """The Appendix C prompt for one order: system prompt, then the instruction and Responses A and B."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": USER_TEMPLATE.format(instruction=instruction, a=a, b=b)},
    ]


_PREFERRED = re.compile(r"preferred\W*?\s*[:：]\s*[*_`\"'“”‘’\s(\[]*([AB])(?![A-Za-z0-9])", re.IGNORECASE)
_BARE = re.compile(r"^[*_`\"'“”\s(\[]*(?:response\s+)?([AB])[*_`\"'“”\s)\].]*$", re.IGNORECASE)


def parse_verdict(text: str) -> Literal["A", "B"] | None:
    """The 'Preferred: A/B' verdict (the last one when repeated), else a last line that is only 'A' or 'B'."""
    found = _PREFERRED.findall(text)
    if found:
        return "A" if found[-1].upper() == "A" else "B"
    lines = [line for line in text.strip().splitlines() if line.strip()]
    match = _BARE.match(lines[-1]) if lines else None
    if match:
        return "A" if match.group(1).upper() == "A" else "B"
    return None


class _Malformed(Exception):
    """An answer that arrived but cannot be used (retried, then counted)."""


class _Stopped(Exception):
    """Another pair already ended the judging with an error: ask nothing more."""


class ChatClient:
    """A minimal chat-completions client (stdlib only) with timeouts and bounded retries."""

    def __init__(self, endpoint: Endpoint, cfg: JudgeConfig) -> None:
        self.endpoint = endpoint
        self.cfg = cfg

    def _post(self, messages: list[dict[str, str]]) -> bytes:
        body = {
            "model": self.endpoint.model,
            "messages": messages,
            "temperature": self.cfg.temperature,
            "max_tokens": self.cfg.max_tokens,
        }
        headers = {"Content-Type": "application/json"}
        if self.endpoint.api_key:
            headers["Authorization"] = f"Bearer {self.endpoint.api_key}"
        request = urllib.request.Request(self.endpoint.url, json.dumps(body).encode(), headers, method="POST")
        with urllib.request.urlopen(request, timeout=self.cfg.timeout) as response:
            return response.read()

    @staticmethod
    def _content(raw: bytes) -> str:
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise _Malformed("body is not JSON") from None
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _Malformed("no choices in the answer")
        message = choices[0].get("message")
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            raise _Malformed("no message content in the answer")
        return content

    def ask(self, messages: list[dict[str, str]], parse: Callable[[str], object | None]) -> tuple[object | None, int]:
        """`parse(content)` of the first usable answer, and how many malformed answers came before it.

        Returns (None, malformed) when every attempt answered something unusable; raises SpiError when the last
        attempt could not reach the endpoint at all, or the endpoint refuses the key, model or path.
        """
        malformed, attempts = 0, self.cfg.retries + 1
        failure: str | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.cfg.backoff * 2 ** (attempt - 1))
            try:
                content = self._content(self._post(messages))
                verdict = parse(content)
                if verdict is None:
                    raise _Malformed("verdict unreadable")
                return verdict, malformed
            except _Malformed:
                malformed += 1
                failure = None
            except urllib.error.HTTPError as exc:
                failure = self._http_failure(exc)
                if failure is None:  # a 4xx other than auth/not-found: this request's answer is unusable
                    malformed += 1
            except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:  # TimeoutError is an OSError
                reason = getattr(exc, "reason", None) or exc
                failure = f"{type(reason).__name__}: {reason}".rstrip(": ")
        if failure is not None:
            raise SpiError(
                f"judge endpoint {self.endpoint.url} unreachable after {attempts} attempts ({failure}); "
                "judgements so far are saved, rerun to resume"
            )
        return None, malformed

    def _http_failure(self, exc: urllib.error.HTTPError) -> str | None:
        """A transport failure to retry (429, 5xx), None for an unusable answer, or SpiError for a fatal one."""
        try:
            detail = (exc.read() or b"").decode("utf-8", "replace").strip().splitlines()
        except OSError:
            detail = []
        hint = f": {detail[0][:160]}" if detail else ""
        if exc.code in (401, 403):
            raise SpiError(f"judge endpoint {self.endpoint.url} refused the API key (HTTP {exc.code}{hint})")
        if exc.code == 404:
            raise SpiError(
                f"judge endpoint {self.endpoint.url} answered HTTP 404 (wrong base_url or model "
                f"'{self.endpoint.model}'{hint})"
            )
        if exc.code == 429 or exc.code >= 500:
            return f"HTTP {exc.code}"
        return None


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
