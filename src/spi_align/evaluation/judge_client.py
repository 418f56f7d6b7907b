"""The judge's chat-completions client, on the `openai` package: endpoint from config and environment, timeouts,
bounded retries, and errors a user can act on.

Transport failures (refused connection, timeout, HTTP 408/409/429/5xx) are retried by the `openai` client itself
(`max_retries`): it waits what the server's Retry-After asks (up to two minutes), else an exponential backoff from
0.5 s (jittered, at most 8 s); when its last attempt fails too, the failure becomes one `SpiError` line. HTTP
401/403/404 end at once (a wrong key, base URL or model). A malformed answer (a body that is not JSON, no choices, a
verdict the caller cannot read, another 4xx) is retried here, `backoff` apart, then reported to the caller, so
malformed answers are counted.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property

import openai
from pydantic import Field

from spi_align.config import Section
from spi_align.core.errors import SpiError

ENV_BASE_URL = "SPI_JUDGE_BASE_URL"
ENV_MODEL = "SPI_JUDGE_MODEL"
ENV_KEYS = ("SPI_JUDGE_API_KEY", "OPENAI_API_KEY")
DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_MODEL = "gpt-4o-mini"


class JudgeConfig(Section):
    """`spi judge` settings (a YAML file via -c, or key=value on the command line)."""

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
    """Extra attempts per request after a transport failure (made by the `openai` client, which honours the
    server's Retry-After) and, separately, after a malformed answer."""
    backoff: float = Field(1.0, ge=0)
    """Seconds before the first retry of a malformed answer; doubled at each further one (transport failures wait
    as the `openai` client does: Retry-After, else exponential backoff from 0.5 s)."""
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


class _Malformed(Exception):
    """An answer that arrived but cannot be used (retried, then counted)."""


class ChatClient:
    """A chat-completions client (the `openai` package) with timeouts, the client's transport retries and bounded
    retries of malformed answers."""

    def __init__(self, endpoint: Endpoint, cfg: JudgeConfig) -> None:
        self.endpoint = endpoint
        self.cfg = cfg

    @cached_property
    def client(self) -> openai.OpenAI:
        # a local endpoint may need no key: the client then sends no Authorization header at all
        return openai.OpenAI(
            base_url=self.endpoint.base_url,
            api_key=self.endpoint.api_key or "unused",
            max_retries=self.cfg.retries,
            timeout=self.cfg.timeout,
        )

    def _post(self, messages: list[dict[str, str]]) -> bytes:
        """The raw answer body (parsed here, so a malformed one is counted rather than raised)."""
        headers = {} if self.endpoint.api_key else {"Authorization": openai.Omit()}
        raw = self.client.chat.completions.with_raw_response.create(
            model=self.endpoint.model,
            messages=messages,  # type: ignore[arg-type]
            temperature=self.cfg.temperature,
            max_tokens=self.cfg.max_tokens,
            extra_headers=headers,
        )
        return raw.http_response.content

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
        malformed = 0
        for attempt in range(self.cfg.retries + 1):
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
            except openai.APIStatusError as exc:
                failure = self._http_failure(exc)
                if failure is not None:
                    raise self._unreachable(failure) from None
                malformed += 1  # a 4xx other than auth/not-found: this request's answer is unusable
            except openai.APIConnectionError as exc:  # refused, reset, timed out (APITimeoutError)
                reason = exc.__cause__ or exc
                raise self._unreachable(f"{type(reason).__name__}: {reason}".rstrip(": ")) from None
        return None, malformed

    def _unreachable(self, failure: str) -> SpiError:
        """The error once the `openai` client's own retries of a transport failure are spent."""
        return SpiError(
            f"judge endpoint {self.endpoint.url} unreachable after {self.cfg.retries + 1} attempts ({failure}); "
            "judgements so far are saved, rerun to resume"
        )

    def _http_failure(self, exc: openai.APIStatusError) -> str | None:
        """A transport failure (408, 409, 429, 5xx: the `openai` client retried it), None for an unusable answer,
        or SpiError for a fatal one."""
        try:
            detail = exc.response.text.strip().splitlines()
        except Exception:  # noqa: BLE001 (a body that cannot be read adds no detail)
            detail = []
        hint = f": {detail[0][:160]}" if detail else ""
        code = exc.status_code
        if code in (401, 403):
            raise SpiError(f"judge endpoint {self.endpoint.url} refused the API key (HTTP {code}{hint})")
        if code == 404:
            raise SpiError(
                f"judge endpoint {self.endpoint.url} answered HTTP 404 (wrong base_url or model "
                f"'{self.endpoint.model}'{hint})"
            )
        if code in (408, 409, 429) or code >= 500:
            return f"HTTP {code}"
        return None
