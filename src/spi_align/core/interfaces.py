"""The project's extension points (protocols): what every layer agrees on.

- Data (`core/records.py`): `Prompt`, `Candidate`, `SearchResult`, `Cost`; rows of partial responses
  (`core/rows.py`: `Rows`, `RowState`).
- `Policy`: a frozen LM backend that starts, extends and selects rows of partial responses (`policy/hf.py`,
  `policy/vllm.py`). Searches talk only to this protocol.
- `Scorer`: (prompts, responses) -> one float each, higher is better (`scoring/`). A `RowReward` can also score
  finished rows straight from the policy's state, with no re-encoding.
- `ValueFunction`: rows -> one guidance value each (eq. 13); value kinds that train them live in `values/`.
- `Search`: a batch of prompts in, one `SearchResult` each out (`search/`; methods are registered by name in
  `search/registry.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from spi_align.core.records import Cost, Prompt, SearchResult
from spi_align.core.rows import Rows

if TYPE_CHECKING:
    import torch


@runtime_checkable
class Scorer(Protocol):
    """Batched scoring: one float per (prompt, response), higher is better. A scorer that runs a transformer bills
    its forward tokens to `billed()` under "reward"; one that does not (a lexicon, a user's function) counts 0."""

    name: str

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> list[float]: ...


@runtime_checkable
class Search(Protocol):
    """An inference-time method: a batch of prompts in, one result per prompt out, compute counted."""

    name: str

    def run(self, prompts: Sequence[Prompt], cost: Cost) -> list[SearchResult]: ...


@runtime_checkable
class RowReward(Protocol):
    """A reward that can also score finished policy rows from the policy's own state (no re-encoding)."""

    def score_rows(self, rows: Rows, index: torch.Tensor, cost: Cost) -> list[float] | None:
        """Rewards of rows `index`, or None when this reward cannot read these rows (score by text then)."""
        ...


@runtime_checkable
class ValueFunction(Protocol):
    """Guidance of the chunk search: one value per row of partial responses, higher is better (eq. 13)."""

    def __call__(self, rows: Rows) -> torch.Tensor: ...


@runtime_checkable
class Policy(Protocol):
    """A frozen causal LM backend. Rows are partial responses, one per candidate, grouped by prompt.

    `start` encodes prompts (one row each); `Rows.select` keeps / repeats rows (the backend's cache follows);
    `extend` samples up to L more tokens for every unfinished row, in place. A backend that exposes hidden states
    (`has_hidden_states`) fills `Rows.hidden` with each row's last-token state, which value heads read for free.
    """

    tokenizer: Any
    device: Any
    chat_template: bool
    has_hidden_states: bool
    max_new_tokens: int

    def reseed(self, seed: int) -> None:
        """Restart the sampling stream: the same seed then gives the same tokens."""
        ...

    def format_prompt(self, prompt: Prompt) -> str:
        """The prompt as the model reads it (chat template applied when the policy uses one)."""
        ...

    def prompt_ids(self, prompts: Sequence[Prompt], tokenizer: Any | None = None) -> list[list[int]]:
        """Token ids of each prompt as the policy reads it (what `start` feeds and usage counts); `tokenizer`: a
        copy of the policy's, for callers on another thread."""
        ...

    def context_left(self, prompt_tokens: int) -> int | None:
        """New tokens that still fit the model's context after a prompt of that many tokens (None: no limit)."""
        ...

    def start(self, prompts: Sequence[Prompt], cost: Cost) -> Rows: ...

    def extend(self, rows: Rows, max_tokens: int, cost: Cost) -> Rows: ...

    def sample(self, prompts: Sequence[Prompt], n: int, cost: Cost) -> Rows:
        """`n` complete samples per prompt, rows grouped by prompt."""
        ...

    def texts(self, rows: Rows, index: torch.Tensor | None = None) -> list[str]:
        """Decoded responses of rows `index` (default: all), special tokens dropped."""
        ...
