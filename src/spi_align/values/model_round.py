"""One value-training step of Algorithm 1 with a separate value model (`spi.value: model`).

Builds the round's model (from the policy's weights, another model, or the run's reward model), encodes the
rollouts as the search will show them to it, trains it by eq. 12 and reports within-prompt Spearman on held-out
prompts, like the heads.

Starting from the reward model (`spi.value_backbone: reward`) is the paper's recipe (its value model is initialised
from the reward model and fine-tuned on each round's rollouts, which are the search's own outputs from round 1 on):
V_k then begins as the reward model read at every prefix, R(x, y_{1:t}) without the end of the turn, and eq. 12 moves
it towards the expected final reward. A transformers classifier (a hub id or folder, or the run's tuned
`reward_model/`) starts it whole, score head included; spi's reward head on the policy's own states (`reward:
train`) starts it as the policy's backbone with that head.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from spi_align.config import SPIConfig
from spi_align.core.errors import SpiError
from spi_align.core.interfaces import Policy, hidden_state_policy
from spi_align.core.records import Prompt
from spi_align.hf.tokenizers import same_tokenizer
from spi_align.values.model import ValueModel
from spi_align.values.model_train import response_values, train_value_model
from spi_align.values.round import heldout_metrics

POLICY = "policy"
REWARD = "reward"


def uses_policy_weights(spi: SPIConfig, policy_spec: str) -> bool:
    """Whether the value model starts from the policy's own backbone ('policy', or the policy's model spec)."""
    return spi.value_backbone in (POLICY, policy_spec)


def _policy_base(spi: SPIConfig, policy: Policy) -> Any:
    """The policy's backbone itself when only the head is trained (shared, never modified), else an fp32 copy."""
    policy = hidden_state_policy(policy, "a value model on the policy's own backbone (spi.value_backbone=policy)")
    if spi.value_train_layers == 0:
        return policy.backbone
    return copy.deepcopy(policy.backbone).float().requires_grad_(False)


def _on_policy(spi: SPIConfig, policy: Policy, policy_spec: str) -> ValueModel:
    return ValueModel(
        _policy_base(spi, policy),
        policy.tokenizer,
        source=policy_spec,
        train_layers=spi.value_train_layers,
        chat_template=policy.chat_template,
    )


def new_value_model(spi: SPIConfig, policy: Policy, policy_spec: str, reward: Any = None) -> ValueModel:
    """A fresh value model for one round, on the policy's device; `reward`: the run's reward, which
    `spi.value_backbone: reward` starts from (`from_reward`)."""
    if spi.value_backbone == REWARD:
        return from_reward(reward, spi, policy, policy_spec)
    if uses_policy_weights(spi, policy_spec):
        return _on_policy(spi, policy, policy_spec)
    return ValueModel.from_source(spi.value_backbone, spi.value_train_layers, device=str(policy.device))


def from_reward(reward: Any, spi: SPIConfig, policy: Policy, policy_spec: str) -> ValueModel:
    """A value model that starts as `reward` read at every prefix (see the module docstring): a transformers
    classifier loaded from where the reward came from (`source`: hub id or folder), or spi's reward head (a
    `RewardModel`) copied onto the backbone it reads (the policy's own, shared as `spi.value_backbone: policy`
    shares it, or an fp32 copy of its own). A saved round is rebuilt on this same start (`load_value_model`)."""
    from spi_align.scoring.reward_model import RewardModel

    if reward is None:
        raise SpiError("spi.value_backbone=reward starts the value model from the run's reward, and there is none")
    name = getattr(reward, "name", type(reward).__name__)
    source = str(getattr(reward, "source", "") or "")
    model = getattr(reward, "model", None)
    if source and not isinstance(model, RewardModel):
        return ValueModel.from_source(source, spi.value_train_layers, device=str(policy.device))
    if not isinstance(model, RewardModel):
        raise SpiError(
            f"spi.value_backbone=reward starts the value model from the reward model, but the reward '{name}' is "
            "no model it can load (a transformers reward model, by hub id or folder, or reward: train)"
        )
    if model.backbone is getattr(policy, "backbone", None):
        value = _on_policy(spi, policy, policy_spec)
    else:  # its own backbone, as it was trained with it (a saved one may differ from its source's weights)
        own = copy.deepcopy(model.backbone).float().requires_grad_(False)
        value = ValueModel(own, model.tokenizer, source=model.source, train_layers=spi.value_train_layers)
    if value.head.in_features != model.head.in_features:
        raise SpiError(f"the reward '{name}' reads states of another width than its backbone's")
    with torch.no_grad():
        value.head.weight.copy_(model.head.weight)
        value.head.bias.copy_(model.head.bias)
    return value


def load_value_model(folder: Path, spi: SPIConfig, policy: Policy, policy_spec: str, reward: Any = None) -> ValueModel:
    """A round's saved value model, its trained tensors written into the backbone it started from: (a copy of) the
    policy's, the one `from_reward` builds from the run's `reward` (`spi.value_backbone: reward`), else the source
    it saved."""
    base: Any = None
    if spi.value_backbone == REWARD:
        base = from_reward(reward, spi, policy, policy_spec).backbone
    elif uses_policy_weights(spi, policy_spec):
        base = _policy_base(spi, policy)
    return ValueModel.load(folder, device=str(policy.device), base=base)


def rollout_ids(
    model: ValueModel, policy: Policy, prompts: Sequence[Prompt], tokens: Sequence[Sequence[int]]
) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, response ids) as `ValueModelGuide` shows them to `model` during the search.

    Same tokenizer: the policy's own prompt encoding and response tokens. Another tokenizer: the decoded
    response re-tokenised after the prompt in the value model's own format.
    """
    if same_tokenizer(model.tokenizer, policy.tokenizer):
        unique = list({p.id: p for p in prompts}.values())
        encoded = dict(zip([p.id for p in unique], policy.prompt_ids(unique), strict=True))
        return [list(encoded[p.id]) for p in prompts], [list(t) for t in tokens]
    texts = policy.tokenizer.batch_decode([list(t) for t in tokens], skip_special_tokens=True)
    encoded = {p.id: model.prompt_ids(p) for p in prompts}
    return [list(encoded[p.id]) for p in prompts], [model.response_ids(t) for t in texts]


def train_value_model_round(
    make: Callable[[], ValueModel],
    policy: Policy,
    prompts: Sequence[Prompt],
    tokens: Sequence[Sequence[int]],
    rewards: Sequence[float],
    spi: SPIConfig,
    seed: int,
    labels: Sequence[float] | None = None,
) -> tuple[ValueModel, dict[str, Any]]:
    """Train V_k on all rollouts; report within-prompt Spearman of a model trained without the held-out prompts, on
    them (as the heads do: two trainings), with the reward and, given `labels`, with the judge."""
    groups = [p.id for p in prompts]

    def probe(fit_idx: list[int], test_idx: list[int]) -> Callable[[int | None], list[float]]:
        model = make()
        p_ids, r_ids = rollout_ids(model, policy, [prompts[i] for i in fit_idx], [tokens[i] for i in fit_idx])
        _train(model, p_ids, r_ids, [rewards[i] for i in fit_idx], [groups[i] for i in fit_idx], spi, seed)
        p_ids, r_ids = rollout_ids(model, policy, [prompts[i] for i in test_idx], [tokens[i] for i in test_idx])
        values = response_values(model, p_ids, r_ids, batch_size=spi.value_batch_size)
        return lambda prefix: [_at(v, prefix) for v in values]

    metrics = heldout_metrics(tokens, rewards, groups, seed, probe, labels)
    model = make()
    p_ids, r_ids = rollout_ids(model, policy, prompts, tokens)
    fit = _train(model, p_ids, r_ids, list(rewards), groups, spi, seed)
    metrics["loss_first_epoch"] = fit["epoch_losses"][0]
    metrics["loss_last_epoch"] = fit["epoch_losses"][-1]
    metrics["trained_parameters"] = fit["trained_parameters"]
    return model, metrics


def _train(model: ValueModel, p_ids, r_ids, rewards, groups, spi: SPIConfig, seed: int) -> dict[str, Any]:
    return train_value_model(
        model,
        p_ids,
        r_ids,
        rewards,
        groups,
        centered=spi.centered,
        epochs=spi.value_epochs,
        lr=spi.value_lr,
        batch_size=spi.value_batch_size,
        seed=seed,
    )


def _at(values, prefix: int | None) -> float:
    """V after `prefix` response tokens (the whole response when None or shorter)."""
    n = values.shape[0]
    t = n if prefix is None else min(prefix, n)
    return float(values[t - 1]) if t > 0 else 0.0
