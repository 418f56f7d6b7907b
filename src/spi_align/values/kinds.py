"""Value kinds as strategies: how V_k is trained (eq. 12), saved, loaded, and turned into guidance (eq. 13).

Every kind answers the same four questions, so Algorithm 1 (`spi.py`) never branches on which one it holds:

- `fit(rollouts)` -> (value, metrics): V_k regressed on every prefix of the round's scored rollouts, with its
  held-out within-prompt Spearman by prefix length in the metrics;
- `save(value, folder)` / `load(folder)`: safetensors + a JSON that says how to rebuild it;
- `guide(values, weights)`: the `ValueFunction` Σ_i weight_i V_i over rows, weight_i = γ/β_i.

Kinds: `heads` (a head on the frozen policy's own hidden states: free during the search) and `model` (a separate
value model with its own KV cache). Adding a kind is one subclass plus one entry in `VALUE_KINDS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from spi_align.config import SPIConfig
from spi_align.errors import SpiError
from spi_align.interfaces import Policy, Prompt, ValueFunction


@dataclass
class Rollouts:
    """One round's training data: every rollout with its prompt, its policy tokens and its reward."""

    prompts: list[Prompt]
    tokens: list[list[int]]
    rewards: list[float]

    def __len__(self) -> int:
        return len(self.tokens)


class ValueKind(ABC):
    """A way to learn V_k: what `spi.value` names."""

    name: ClassVar[str]
    marker: ClassVar[str]
    """The file a saved value of this kind always has (its presence means the round is trained)."""
    needs_hidden_states: ClassVar[bool] = False
    """Whether guidance reads the policy's own hidden states (backends without them cannot use this kind)."""

    def __init__(self, policy: Policy, spi: SPIConfig, policy_spec: str, seed: int) -> None:
        if self.needs_hidden_states and not policy.has_hidden_states:
            raise SpiError(
                f"spi.value={self.name} reads the policy's hidden states, which this policy backend does not expose; "
                "use spi.value=model or spi.reward_guide (reward on partial text)"
            )
        self.policy, self.spi, self.policy_spec, self.seed = policy, spi, policy_spec, seed

    def saved(self, folder: Path) -> bool:
        return (folder / self.marker).is_file()

    @abstractmethod
    def fit(self, rollouts: Rollouts) -> tuple[Any, dict[str, Any]]: ...

    @abstractmethod
    def save(self, value: Any, folder: Path) -> None: ...

    @abstractmethod
    def load(self, folder: Path) -> Any: ...

    @abstractmethod
    def guide(self, values: Sequence[Any], weights: Sequence[float]) -> ValueFunction: ...


class HeadValues(ValueKind):
    """Linear or MLP heads on the policy's last hidden state; all rounds stack into one mat-vec (`HeadStack`)."""

    name = "heads"
    marker = "value_head.json"
    needs_hidden_states = True

    def fit(self, rollouts: Rollouts) -> tuple[Any, dict[str, Any]]:
        from spi_align.values.round import train_value

        return train_value(self.policy, rollouts.prompts, rollouts.tokens, rollouts.rewards, self.spi, self.seed)

    def save(self, value: Any, folder: Path) -> None:
        value.save(folder)

    def load(self, folder: Path) -> Any:
        from spi_align.values.heads import ValueHead

        return ValueHead.load(folder)

    def guide(self, values: Sequence[Any], weights: Sequence[float]) -> ValueFunction:
        from spi_align.values.heads import HeadStack

        return HiddenStateValue(HeadStack(list(values), list(weights)).to(self.policy.device))


class HiddenStateValue:
    """`ValueFunction` reading `rows.hidden` (the policy's last hidden state of each row)."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack

    def __call__(self, rows: Any) -> Any:
        return self.stack(rows.hidden)


class ModelValues(ValueKind):
    """A separate value model per round (backbone + fp32 scalar head), with its own KV cache during the search."""

    name = "model"
    marker = "value_model.json"

    def fit(self, rollouts: Rollouts) -> tuple[Any, dict[str, Any]]:
        from spi_align.values.model_round import new_value_model, train_value_model_round

        return train_value_model_round(
            lambda: new_value_model(self.spi, self.policy, self.policy_spec),
            self.policy,
            rollouts.prompts,
            rollouts.tokens,
            rollouts.rewards,
            self.spi,
            self.seed,
        )

    def save(self, value: Any, folder: Path) -> None:
        value.save(folder)

    def load(self, folder: Path) -> Any:
        from spi_align.values.model_round import load_value_model

        return load_value_model(folder, self.spi, self.policy, self.policy_spec)

    def guide(self, values: Sequence[Any], weights: Sequence[float]) -> ValueFunction:
        from spi_align.values.guide import ValueModelGuide

        return ValueModelGuide(list(values), list(weights), self.policy.tokenizer)


VALUE_KINDS: dict[str, type[ValueKind]] = {kind.name: kind for kind in (HeadValues, ModelValues)}
"""Every value kind by its `spi.value` name."""


def make_value_kind(policy: Policy, spi: SPIConfig, policy_spec: str, seed: int) -> ValueKind:
    """The kind `spi.value` names."""
    kind = VALUE_KINDS.get(spi.value)
    if kind is None:
        raise SpiError(f"unknown spi.value '{spi.value}': use one of {', '.join(VALUE_KINDS)}")
    return kind(policy, spi, policy_spec, seed)
