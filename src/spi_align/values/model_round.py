"""One value-training step of Algorithm 1 with a separate value model (`spi.value: model`).

Builds the round's model (from the policy's weights or another model), encodes the rollouts as the search will
show them to it, trains it by eq. 12 and reports within-prompt Spearman on held-out prompts, like the heads.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from spi_align.config import SPIConfig
from spi_align.core.interfaces import Policy, hidden_state_policy
from spi_align.core.records import Prompt
from spi_align.hf.tokenizers import same_tokenizer
from spi_align.values.model import ValueModel
from spi_align.values.model_train import response_values, train_value_model
from spi_align.values.round import heldout_metrics

POLICY = "policy"


def uses_policy_weights(spi: SPIConfig, policy_spec: str) -> bool:
    """Whether the value model starts from the policy's own backbone ('policy', or the policy's model spec)."""
    return spi.value_backbone in (POLICY, policy_spec)


def _policy_base(spi: SPIConfig, policy: Policy) -> Any:
    """The policy's backbone itself when only the head is trained (shared, never modified), else an fp32 copy."""
    policy = hidden_state_policy(policy, "a value model on the policy's own backbone (spi.value_backbone=policy)")
    if spi.value_train_layers == 0:
        return policy.backbone
    return copy.deepcopy(policy.backbone).float().requires_grad_(False)


def new_value_model(spi: SPIConfig, policy: Policy, policy_spec: str) -> ValueModel:
    """A fresh value model for one round, on the policy's device."""
    if uses_policy_weights(spi, policy_spec):
        return ValueModel(
            _policy_base(spi, policy),
            policy.tokenizer,
            source=policy_spec,
            train_layers=spi.value_train_layers,
            chat_template=policy.chat_template,
        )
    return ValueModel.from_source(spi.value_backbone, spi.value_train_layers, device=str(policy.device))


def load_value_model(folder: Path, spi: SPIConfig, policy: Policy, policy_spec: str) -> ValueModel:
    """A round's saved value model; built on (a copy of) the policy's backbone when it came from there."""
    base = _policy_base(spi, policy) if uses_policy_weights(spi, policy_spec) else None
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
) -> tuple[ValueModel, dict[str, Any]]:
    """Train V_k on all rollouts; report within-prompt Spearman of a model trained without the held-out prompts, on
    them (as the heads do: two trainings)."""
    groups = [p.id for p in prompts]

    def probe(fit_idx: list[int], test_idx: list[int]) -> Callable[[int | None], list[float]]:
        model = make()
        p_ids, r_ids = rollout_ids(model, policy, [prompts[i] for i in fit_idx], [tokens[i] for i in fit_idx])
        _train(model, p_ids, r_ids, [rewards[i] for i in fit_idx], [groups[i] for i in fit_idx], spi, seed)
        p_ids, r_ids = rollout_ids(model, policy, [prompts[i] for i in test_idx], [tokens[i] for i in test_idx])
        values = response_values(model, p_ids, r_ids, batch_size=spi.value_batch_size)
        return lambda prefix: [_at(v, prefix) for v in values]

    metrics = heldout_metrics(tokens, rewards, groups, seed, probe)
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
