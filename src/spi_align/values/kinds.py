"""Value kinds as strategies: how V_k is trained (eq. 12), saved, loaded, and turned into guidance (eq. 13).

Every kind answers the same four questions, so Algorithm 1 (`spi.py`) never branches on which one it holds:

- `fit(rollouts)` -> (value, metrics): V_k regressed on every prefix of the round's scored rollouts, with its
  held-out within-prompt Spearman by prefix length in the metrics;
- `save(value, folder)` / `load(folder)`: safetensors + a JSON that says how to rebuild it;
- `guide(values, weights)`: the `ValueFunction` Σ_i weight_i V_i over rows, weight_i = γ/β_i.

Kinds: `heads` (a head on the frozen policy's own hidden states: free during the search), `model` (a separate
value model with its own KV cache) and `anchored` (the reward on the partial response plus a learned residual).
Adding a kind is one subclass plus one entry in `VALUE_KINDS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from spi_align.config import SPIConfig
from spi_align.core.errors import SpiError
from spi_align.core.interfaces import HiddenStatePolicy, Policy, ValueFunction, hidden_state_policy
from spi_align.core.records import Prompt


@dataclass
class Rollouts:
    """One round's training data: every rollout with its prompt, its policy tokens and its reward."""

    prompts: list[Prompt]
    tokens: list[list[int]]
    rewards: list[float]
    states: list[Any] | None = None
    """Optional `PrefixStates` of each rollout (computed once by the caller and shared, e.g. with the reward model)."""
    labels: list[float] | None = None
    """Optional: the evaluator's (the judge's) score of each rollout, which no value is fitted on; the value's
    held-out ranking is then also reported against it (`heldout_judge_spearman_at_<t>`, beside the ranking against
    the reward). With reward: train the reward model itself was fitted on round 0's labels of every training prompt,
    the value's held-out ones included: round 0's judge figures are optimistic there."""

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
        if self.needs_hidden_states:
            hidden_state_policy(policy, f"spi.value={self.name} (it reads the policy's hidden states)")
        self.policy, self.spi, self.policy_spec, self.seed = policy, spi, policy_spec, seed
        self.reward: Any = None
        """The reward of the run (set by Algorithm 1 before fitting); kinds anchored on it read it."""

    def saved(self, folder: Path) -> bool:
        return (folder / self.marker).is_file()

    def baseline(self, rollouts: Rollouts) -> dict[str, Any]:
        """Held-out Spearman of the reward on the partial response at the reported prefix lengths, on the same
        held-out prompts as the kind's own metrics: the zero-shot ranking a learned value must beat."""
        from spi_align.values.baseline import partial_reward_spearman
        from spi_align.values.round import PREFIXES, heldout_split

        if self.reward is None:
            return {}
        _, test = heldout_split([p.id for p in rollouts.prompts], self.seed)
        if not test:
            return {}
        pick = lambda xs: [xs[i] for i in test]  # noqa: E731
        return partial_reward_spearman(
            self.policy,
            self.reward,
            pick(rollouts.prompts),
            pick(rollouts.tokens),
            pick(rollouts.rewards),
            PREFIXES,
            labels=None if rollouts.labels is None else pick(rollouts.labels),
        )

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

        states = hidden_state_policy(self.policy, "spi.value=heads")
        value, metrics = train_value(
            states, rollouts.prompts, rollouts.tokens, rollouts.rewards, self.spi, self.seed, labels=rollouts.labels
        )
        return value, {**metrics, **self.baseline(rollouts)}

    def save(self, value: Any, folder: Path) -> None:
        value.save(folder)

    def load(self, folder: Path) -> Any:
        from spi_align.values.heads import ValueHead

        return ValueHead.load(folder)

    def guide(self, values: Sequence[Any], weights: Sequence[float]) -> ValueFunction:
        from spi_align.values.heads import HeadStack

        stack = HeadStack(list(values), list(weights)).to(self.policy.device)
        return HiddenStateValue(stack, hidden_state_policy(self.policy, "spi.value=heads"))


class HiddenStateValue:
    """`ValueFunction` reading the policy's last hidden state of each row (`HiddenStatePolicy.last_hidden`)."""

    def __init__(self, stack: Any, policy: HiddenStatePolicy) -> None:
        self.stack, self.policy = stack, policy

    def __call__(self, rows: Any) -> Any:
        return self.stack(self.policy.last_hidden(rows))


class ModelValues(ValueKind):
    """A separate value model per round (backbone + fp32 scalar head), with its own KV cache during the search."""

    name = "model"
    marker = "value_model.json"

    def fit(self, rollouts: Rollouts) -> tuple[Any, dict[str, Any]]:
        from spi_align.values.model_round import new_value_model, train_value_model_round

        value, metrics = train_value_model_round(
            lambda: new_value_model(self.spi, self.policy, self.policy_spec, self.reward),
            self.policy,
            rollouts.prompts,
            rollouts.tokens,
            rollouts.rewards,
            self.spi,
            self.seed,
            labels=rollouts.labels,
        )
        return value, {**metrics, **self.baseline(rollouts)}

    def save(self, value: Any, folder: Path) -> None:
        value.save(folder)

    def load(self, folder: Path) -> Any:
        from spi_align.values.model_round import load_value_model

        return load_value_model(folder, self.spi, self.policy, self.policy_spec, self.reward)

    def guide(self, values: Sequence[Any], weights: Sequence[float]) -> ValueFunction:
        from spi_align.values.guide import ValueModelGuide

        return ValueModelGuide(list(values), list(weights), self.policy.tokenizer)


class AnchoredValues(ValueKind):
    """V = R_t + α(t)·u(e_t): the reward on the partial response (a reward head on the state closed with the end
    token, or a text scorer on the decoded prefix), plus a linear head on that state fitted to the residual, with
    tree targets, an optional ranking loss and α per length (`values/anchored.py`). Needs a policy that exposes
    hidden states."""

    name = "anchored"
    marker = "value_head.json"
    needs_hidden_states = True

    def reward_head(self) -> Any | None:
        """The reward's head on the policy's own states, or None for a reward that scores text."""
        from spi_align.scoring.row_reward import PolicyHeadReward

        if self.reward is None:
            raise SpiError("spi.value=anchored needs the reward it anchors on")
        if isinstance(self.reward, PolicyHeadReward) and self.reward.from_rows:
            return self.reward.model.head
        return None

    def lengths(self) -> list[int]:
        from spi_align.values.anchored import decision_lengths

        return decision_lengths(self.spi.chunk, self.policy.max_new_tokens)

    def fit(self, rollouts: Rollouts) -> tuple[Any, dict[str, Any]]:
        from spi_align.values.anchored import TextAnchor, fit_anchored
        from spi_align.values.prefix_states import prefix_states

        head = self.reward_head()
        anchor = (
            head
            if head is not None
            else TextAnchor(self.reward, self.policy.tokenizer, rollouts.prompts, rollouts.tokens)
        )
        states = rollouts.states
        if states is None:
            states = prefix_states(self.policy, rollouts.prompts, rollouts.tokens, self.lengths())
        groups = [p.id for p in rollouts.prompts]
        return fit_anchored(
            states,
            rollouts.rewards,
            groups,
            anchor,
            self.lengths(),
            self.spi.ridge,
            self.seed,
            tokens=rollouts.tokens,
            rank_weights=self.spi.rank_weights,
            per_depth=self.spi.per_depth,
            labels=rollouts.labels,
        )

    def save(self, value: Any, folder: Path) -> None:
        value.save(folder)

    def load(self, folder: Path) -> Any:
        from spi_align.values.anchored import AnchoredValue

        return AnchoredValue.load(folder)

    def guide(self, values: Sequence[Any], weights: Sequence[float]) -> ValueFunction:
        from spi_align.values.anchored import AnchoredGuide
        from spi_align.values.reward_guide import partial_reward_value

        head = self.reward_head()
        anchor = head if head is not None else partial_reward_value(self.reward, self.policy)
        return AnchoredGuide(self.policy, anchor, list(values), list(weights))


VALUE_KINDS: dict[str, type[ValueKind]] = {kind.name: kind for kind in (HeadValues, ModelValues, AnchoredValues)}
"""Every value kind by its `spi.value` name."""


def make_value_kind(policy: Policy, spi: SPIConfig, policy_spec: str, seed: int) -> ValueKind:
    """The kind `spi.value` names."""
    kind = VALUE_KINDS.get(spi.value)
    if kind is None:
        raise SpiError(f"unknown spi.value '{spi.value}': use one of {', '.join(VALUE_KINDS)}")
    return kind(policy, spi, policy_spec, seed)
