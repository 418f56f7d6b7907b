"""The server's Prometheus metrics (`GET /metrics`), in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """Requests, queue depth, batch sizes, tokens generated, and latency histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "spi_requests", "Accepted requests by endpoint, model and status", ["endpoint", "model", "status"],
            registry=r,
        )  # fmt: skip
        self.in_flight = Gauge("spi_requests_in_flight", "Accepted requests not yet answered", registry=r)
        self.queue_depth = Gauge("spi_queue_depth", "Requests waiting for a batch", registry=r)
        self.dropped = Counter(
            "spi_requests_dropped", "Requests dropped before their search ran, by reason", ["reason"], registry=r
        )
        self.refused = Counter(
            "spi_requests_refused", "Requests answered with an error before a search took them, by status",
            ["status"], registry=r,
        )  # fmt: skip
        self.batch_prompts = Histogram(
            "spi_batch_prompts", "Prompts per search call", ["model"], buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "spi_batch_requests", "Requests per search call", ["model"], buckets=SIZE_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "spi_batch_seconds", "Wall time of one search call", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.tokens_generated = Counter(
            "spi_tokens_generated", "Tokens the searches generated (every candidate's)", ["model"], registry=r
        )
        self.prompt_tokens = Counter("spi_prompt_tokens", "Prompt tokens of answered requests", ["model"], registry=r)
        self.latency = Histogram(
            "spi_request_latency_seconds", "Time from a request's arrival to its answer", ["endpoint", "model"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip

    def render(self) -> bytes:
        return generate_latest(self.registry)
