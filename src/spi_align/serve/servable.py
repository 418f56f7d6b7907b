"""What `spi serve` serves: a frozen policy and the inference-time methods built on it, by name.

`spi_align.spi.ImprovedPolicy` (a finished `spi run`, loaded with `spi.load`) satisfies this protocol; tests serve
a small adapter over plain sampling, best-of-N and the chunk beam search.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from spi_align.core.interfaces import Policy, Search


@runtime_checkable
class Servable(Protocol):
    """A policy plus named methods. The server reads `policy.tokenizer`, `policy.prompt_ids`, `policy.gen` (the
    default settings; a batch's search runs with them, the request's max_tokens / temperature / top_p applied, handed
    to `Search.run`) and `policy.reseed` (a request's `seed`)."""

    policy: Policy

    def available_methods(self) -> list[str]:
        """Method names this policy serves, e.g. ['sample', 'bon-16', 'spi-1', 'spi-2'] (the requests' `model`)."""
        ...

    def method(
        self, name: str, width: int | None = None, successors: int | None = None, chunk: int | None = None
    ) -> Search:
        """The search called `name`, its beam shape (W, K, L) optionally overridden; SpiError for an unknown name."""
        ...
