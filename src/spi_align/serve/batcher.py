"""Dynamic batching: concurrent requests with the same method and settings become one search call.

Requests wait in one bounded FIFO queue. A single worker thread owns the model (torch state is not shared across
concurrent searches): it takes the oldest request, gathers the queued requests with the same `BatchKey` (method,
W, K, L, max_tokens, temperature, top_p) until `max_batch` prompts or until the oldest has waited `max_wait_ms`,
and runs `search.run(prompts, cost, gen)` once for all of them, `gen` the batch's generation settings (the policy's
defaults with the request's max_tokens, temperature and top_p); nothing is assigned on the shared policy. A request
with a `seed` runs alone (its answer then does not
depend on what else was queued), after `policy.reseed(seed)`.

A request that was cancelled (its client went away, or its time limit passed) before its batch starts is left out
of it; one cancelled during its search is computed with the others and its answer discarded. When a search call
fails, each of its requests is retried alone, so one bad request cannot fail the others.

A request may ask for each answer's record (`return_trace`): its batch's search then records its tree (`trace`, when
the search has the switch; it costs no forward pass) and every answer carries `SearchResult.to_record()`.

Each request is billed the tokens generated for its own prompts: the policy counts them per prompt of the batch
(`Cost.tokens_by_prompt`); a backend that does not is apportioned the batch's total by candidate tokens.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from spi_align.config import GenerationConfig
from spi_align.core.interfaces import Search
from spi_align.core.records import Cost, Prompt, SearchResult
from spi_align.serve.config import ServeConfig
from spi_align.serve.metrics import Metrics
from spi_align.serve.servable import Servable

log = logging.getLogger(__name__)

SEARCH_CACHE = 32
"""Searches kept built, by (method, W, K, L)."""


@dataclass(frozen=True)
class BatchKey:
    """Requests batch together only when all of these are equal."""

    method: str
    width: int | None
    successors: int | None
    chunk: int | None
    max_tokens: int
    temperature: float
    """0 = greedy decoding."""
    top_p: float
    seed: int | None = None


@dataclass
class Answer:
    """One prompt's outcome."""

    text: str
    finished: bool
    """The policy ended the answer itself (else it was cut at max_tokens)."""
    tokens_generated: int
    """Every token the search generated for this prompt, over all its candidates."""
    record: dict[str, Any] | None = None
    """The search's whole record of this prompt (candidates, and its tree when it recorded one), when a request of
    the batch asked for it."""


class QueueFull(Exception):
    """The bounded queue has no room: answer 503."""


@dataclass
class Job:
    """One request: its prompts (n copies per prompt), where its answers go, and its deadline."""

    key: BatchKey
    prompts: list[Prompt]
    deliver: Callable[[list[Answer] | BaseException], None]
    """Called once, from the worker thread, with one Answer per prompt or the exception that failed it."""
    deadline: float
    """time.monotonic() after which the request is dropped."""
    arrived: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    """Set by the server when the client went away or the deadline passed."""
    trace: bool = False
    """The request asked for its answers' records (`return_trace`)."""


class Batcher:
    """The queue and the one worker thread that runs searches."""

    def __init__(self, servable: Servable, cfg: ServeConfig, metrics: Metrics) -> None:
        self.servable, self.cfg, self.metrics = servable, cfg, metrics
        self.queue: deque[Job] = deque()
        self.cond = threading.Condition()
        self.stopping = False
        self.searches: OrderedDict[tuple[str, int | None, int | None, int | None], Search] = OrderedDict()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.thread is None:
            self.thread = threading.Thread(target=self._loop, name="spi-serve-worker", daemon=True)
            self.thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then end the worker thread."""
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self.thread is not None:
            self.thread.join(timeout)
            self.thread = None

    def submit(self, job: Job) -> None:
        """Queue a request; QueueFull when `queue_size` requests are already waiting."""
        with self.cond:
            if self.stopping:
                raise QueueFull("the server is shutting down")
            if len(self.queue) >= self.cfg.queue_size:
                raise QueueFull(f"{len(self.queue)} requests are waiting")
            self.queue.append(job)
            self.metrics.queue_depth.set(len(self.queue))
            self.cond.notify()

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self._run(batch)
            except BaseException as exc:  # noqa: BLE001 (the worker must outlive any one batch)
                log.exception("batch of %d requests failed", len(batch))
                for job in batch:
                    job.deliver(exc)

    def _usable(self, job: Job, now: float) -> bool:
        """False (and the job answered) for a cancelled or expired job."""
        if job.cancelled:  # the server counted why (timeout, disconnect)
            return False
        if now >= job.deadline:
            job.cancelled = True
            self.metrics.dropped.labels("timeout").inc()
            job.deliver(TimeoutError("request timed out in the queue"))
            return False
        return True

    def _next_batch(self) -> list[Job] | None:
        """The oldest live job and the queued jobs that share its key, within max_batch and max_wait_ms."""
        with self.cond:
            while True:
                while not self.queue and not self.stopping:
                    self.cond.wait()
                if not self.queue:
                    return None
                first = self.queue.popleft()
                self.metrics.queue_depth.set(len(self.queue))
                if self._usable(first, time.monotonic()):
                    break
            batch, size = [first], len(first.prompts)
            if first.key.seed is not None:
                return batch
            until = first.arrived + self.cfg.max_wait_ms / 1000
            while size < self.cfg.max_batch:
                now = time.monotonic()
                for job in list(self.queue):
                    if job.key == first.key and size + len(job.prompts) <= self.cfg.max_batch:
                        self.queue.remove(job)
                        if self._usable(job, now):
                            batch.append(job)
                            size += len(job.prompts)
                self.metrics.queue_depth.set(len(self.queue))
                if size >= self.cfg.max_batch or now >= until or self.stopping:
                    break
                self.cond.wait(until - now)
            return batch

    def _run(self, batch: list[Job]) -> None:
        live = [job for job in batch if self._usable(job, time.monotonic())]
        if not live:
            return
        key = live[0].key
        prompts = [p for job in live for p in job.prompts]
        started = time.monotonic()
        try:
            answers = self.search(key, prompts, trace=any(job.trace for job in live))
        except Exception as exc:
            if len(live) > 1:
                log.warning("a batch of %d requests failed (%s); retrying each alone", len(live), exc)
                for job in live:
                    self._run([job])
                return
            live[0].deliver(exc)
            return
        self.metrics.batch_seconds.labels(key.method).observe(time.monotonic() - started)
        self.metrics.batch_prompts.labels(key.method).observe(len(prompts))
        self.metrics.batch_requests.labels(key.method).observe(len(live))
        self.metrics.tokens_generated.labels(key.method).inc(sum(a.tokens_generated for a in answers))
        start = 0
        for job in live:
            job.deliver(answers[start : start + len(job.prompts)])
            start += len(job.prompts)

    def method(self, key: BatchKey) -> Search:
        """The search for a key's method and beam shape, built once."""
        shape = (key.method, key.width, key.successors, key.chunk)
        search = self.searches.get(shape)
        if search is None:
            search = self.servable.method(key.method, key.width, key.successors, key.chunk)
            self.searches[shape] = search
            while len(self.searches) > SEARCH_CACHE:
                self.searches.popitem(last=False)
        self.searches.move_to_end(shape)
        return search

    def search(self, key: BatchKey, prompts: Sequence[Prompt], trace: bool = False) -> list[Answer]:
        """One search call over `prompts` with the key's settings; one Answer per prompt, with its record when
        `trace` (the search records its tree then, if it can)."""
        search = self.method(key)
        if hasattr(search, "trace"):  # one worker thread: the switch is this call's alone
            search.trace = trace
        policy = self.servable.policy
        base = policy.gen
        sampled = key.temperature > 0
        gen = GenerationConfig(
            max_new_tokens=key.max_tokens,
            temperature=key.temperature if sampled else base.temperature,
            top_k=base.top_k,
            top_p=key.top_p,
            do_sample=sampled,
        )
        if key.seed is not None:
            policy.reseed(key.seed)
        cost = Cost(tokens_by_prompt=[0] * len(prompts))
        try:
            results = search.run(prompts, cost, gen)
        finally:
            if key.seed is not None:  # later unseeded batches must not replay this seed's stream
                policy.reseed(secrets.randbits(63))
        counts = per_prompt_tokens(cost, results)
        return [
            Answer(r.chosen.text, r.chosen.finished, n, r.to_record() if trace else None)
            for r, n in zip(results, counts, strict=True)
        ]


def per_prompt_tokens(cost: Cost, results: Sequence[SearchResult]) -> list[int]:
    """Tokens generated for each prompt: the policy's own per-prompt count when it kept one that adds up, else the
    batch's total apportioned by each prompt's candidate tokens (largest remainder, so the shares add up)."""
    counted = cost.tokens_by_prompt
    if counted is not None and sum(counted) == cost.tokens_generated:
        return list(counted)
    weights = [sum(c.num_tokens for c in r.candidates) for r in results]
    total, mass = cost.tokens_generated, sum(weights)
    if mass == 0:
        weights, mass = [1] * len(results), len(results)
    exact = [total * w / mass for w in weights]
    shares = [int(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: exact[i] - shares[i], reverse=True)
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares
