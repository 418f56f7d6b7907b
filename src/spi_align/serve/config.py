"""`spi serve` settings: where it listens, who may call it, how requests are batched, and every cap.

Set on the command line: `spi serve RUN_DIR --host 0.0.0.0 --api-key ... max_batch=32 max_wait_ms=20`.
"""

from __future__ import annotations

import ipaddress

from pydantic import Field

from spi_align.config import Section
from spi_align.core.errors import SpiError

ENV_API_KEY = "SPI_API_KEY"


class ServeConfig(Section):
    host: str = "127.0.0.1"
    """Address to bind. Loopback by default; any other address needs an API key."""
    port: int = Field(8000, ge=0, le=65535)
    """TCP port (0 = any free port)."""
    api_key: str | None = Field(None, repr=False)
    """Bearer key every /v1 and /metrics request must carry (default: $SPI_API_KEY; None = no key, loopback only).
    Compared in constant time."""
    max_batch: int = Field(8, gt=0)
    """Most prompts in one search call (a request with n = 4 counts 4). Each prompt of best-of-16 or SPI with
    W·K = 16 is 16 rows; on CPU decode throughput peaks near 128 rows (8 such prompts) and falls past it."""
    max_wait_ms: float = Field(10.0, ge=0)
    """How long the first request of a batch waits for others with the same settings to join it."""
    queue_size: int = Field(256, gt=0)
    """Requests waiting for a batch; one more is answered 503 with Retry-After."""
    retry_after_s: int = Field(1, ge=0)
    """The Retry-After header of a 503 (seconds)."""
    request_timeout_s: float = Field(600.0, gt=0)
    """A request still unanswered after this long (queue + search) is dropped and answered 504."""
    drain_timeout_s: float = Field(120.0, gt=0)
    """On SIGTERM: stop accepting, then wait at most this long for in-flight requests before exiting."""
    max_body_bytes: int = Field(1_000_000, gt=0)
    """Largest request body; a bigger one is answered 413."""
    max_tokens: int = Field(1024, gt=0)
    """Largest `max_tokens` a request may ask for (also capped by the model's context)."""
    max_n: int = Field(8, gt=0)
    """Largest `n` (independent answers per request)."""
    max_width: int = Field(16, gt=0)
    """Largest beam width W a request may set (`width` in the body)."""
    max_successors: int = Field(16, gt=0)
    """Largest successors per beam K a request may set (`successors` in the body)."""
    max_chunk: int = Field(256, gt=0)
    """Largest chunk length L a request may set (`chunk` in the body)."""
    max_candidates: int = Field(64, gt=0)
    """Largest W·K a request may set (candidates per prompt at every step)."""
    log_level: str = "info"
    """uvicorn's log level (critical, error, warning, info, debug)."""


def is_loopback(host: str) -> bool:
    """True for 'localhost' and loopback addresses (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(cfg: ServeConfig) -> None:
    """Refuse to bind a non-loopback address without an API key."""
    if not is_loopback(cfg.host) and not cfg.api_key:
        raise SpiError(
            f"binding {cfg.host} exposes the server beyond this machine: set an API key (--api-key or ${ENV_API_KEY})"
        )
