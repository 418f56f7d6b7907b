"""The project's extension points (protocols): what every layer agrees on.

- Data (`core/records.py`): `Prompt`, `Candidate`, `SearchResult`, `Cost`; rows of partial responses
  (`core/rows.py`: `Rows`, `RowState`).
- `Policy`: a frozen LM backend that starts, extends and selects rows of partial responses (`policy/hf.py`,
  `policy/vllm.py`), sampled with the `GenerationSettings` a search hands to `start` (the policy's `gen` by default).
  Searches talk only to this protocol. `HiddenStatePolicy` is the capability of a backend that also exposes hidden
  states (`policy/hf.py`; `policy/vllm.py` through its state engine): what reads them (value heads, reward heads,
  anchored values) asks for it through `hidden_state_policy`, which refuses other backends in one line.
- `Scorer`: (prompts, responses) -> one float each, higher is better (`scoring/`). A `RowReward` can also score
  finished rows straight from the policy's state, with no re-encoding.
- `ValueFunction`: rows -> one guidance value each (eq. 13); value kinds that train them live in `values/`.
- `Search`: a batch of prompts in, one `SearchResult` each out (`search/`; methods are registered by name in
  `search/registry.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from spi_align.core.errors import SpiError
from spi_align.core.records import Cost, Prompt, SearchResult
from spi_align.core.rows import GenerationSettings, Rows

if TYPE_CHECKING:
    import torch

__all__ = [
    "GenerationSettings",
    "HiddenStatePolicy",
    "Policy",
    "RowReward",
    "Scorer",
    "Search",
    "ValueFunction",
    "hidden_state_policy",
]


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

    def run(self, prompts: Sequence[Prompt], cost: Cost, gen: GenerationSettings | None = None) -> list[SearchResult]:
        """One result per prompt, sampled with `gen` (None: the policy's default settings)."""
        ...


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

    `start` encodes prompts (one row each) and fixes the rows' generation settings (`gen`, else the policy's
    default); `Rows.select` keeps / repeats rows (the backend's cache follows); `extend` samples up to L more tokens
    for every unfinished row, in place, with the rows' settings. Settings are never assigned on a shared policy for
    one call: two searches on one policy sample each with its own.
    """

    tokenizer: Any
    device: Any
    chat_template: bool
    has_hidden_states: bool
    """Whether this backend is a `HiddenStatePolicy` (rows carry hidden states)."""
    end_id: int
    """The end-of-turn token id."""
    eos_ids: torch.Tensor
    """Every id that ends a row (`end_id` and the generation config's)."""
    pad_id: int
    choice_generator: torch.Generator
    """A CPU generator for the search's own draws (softmax selection); `reseed` reseeds it."""

    @property
    def gen(self) -> GenerationSettings:
        """The default generation settings (what `start` uses when given none)."""
        ...

    @property
    def max_new_tokens(self) -> int:
        """The default settings' longest response."""
        ...

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

    def start(self, prompts: Sequence[Prompt], cost: Cost, gen: GenerationSettings | None = None) -> Rows:
        """One row per prompt, no response yet, to be sampled with `gen` (None: the policy's `gen`)."""
        ...

    def extend(self, rows: Rows, max_tokens: int, cost: Cost) -> Rows:
        """Up to `max_tokens` more tokens for every unfinished row, in place, with the rows' settings."""
        ...

    def sample(self, prompts: Sequence[Prompt], n: int, cost: Cost, gen: GenerationSettings | None = None) -> Rows:
        """`n` complete samples per prompt, rows grouped by prompt, sampled with `gen` (None: the policy's)."""
        ...

    def texts(self, rows: Rows, index: torch.Tensor | None = None) -> list[str]:
        """Decoded responses of rows `index` (default: all), special tokens dropped."""
        ...


@runtime_checkable
class HiddenStatePolicy(Policy, Protocol):
    """A `Policy` that exposes its hidden states: each row's last-token state (`last_hidden`, what value heads read;
    free on transformers, where `Rows.hidden` holds it, one state-engine read on vLLM), the states after the end
    token (`end_hidden`, `peek_end_hidden`), and a transformers backbone that runs models sharing the policy's
    weights (the reward head, value models) and teacher-forced passes over whole texts."""

    backbone: Any
    """The transformer without its LM head (a `transformers.PreTrainedModel`)."""
    runner: Any
    """Runs the backbone on padded batches (`hf.batches.BackboneRunner`)."""

    @property
    def hidden_size(self) -> int: ...

    def last_hidden(self, rows: Rows) -> torch.Tensor:
        """(R, H) the state after each row's last token (prompt or response): `rows.hidden` once set; a backend that
        keeps no states in its rows computes it on first read and keeps it there until the rows are extended."""
        ...

    def end_hidden(self, rows: Rows, index: torch.Tensor, cost: Cost) -> torch.Tensor:
        """Hidden states after the end-of-turn token of finished (or full) rows `index`; ends the others."""
        ...

    def peek_end_hidden(self, rows: Rows) -> torch.Tensor:
        """Hidden states each row would have after the end-of-turn token, without ending any row."""
        ...


NO_HIDDEN_STATES = (
    "this policy backend ({backend}) exposes no hidden states, so {what} cannot run on it; there use text scorers, "
    "the reward on partial text (spi.reward_guide with a text or reward-model-directory reward), a separate value "
    "model (spi.value=model with spi.value_backbone set to a model), or the implicit-reward pair; or "
    "policy.backend=hf, or on vLLM policy.vllm.hidden_states=true"
)
"""The one-line refusal of anything that needs the policy's hidden states."""


def hidden_state_policy(policy: Policy, what: str) -> HiddenStatePolicy:
    """`policy` as a `HiddenStatePolicy`, or the one-line refusal naming `what` needs its hidden states."""
    if isinstance(policy, HiddenStatePolicy):
        return policy
    raise SpiError(NO_HIDDEN_STATES.format(backend=type(policy).__name__, what=what))
