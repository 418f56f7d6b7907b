"""One value-training step of Algorithm 1: rollouts + rewards → features → V_k (eq. 12), with its ranking quality."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from spi_align.config import SPIConfig
from spi_align.core.interfaces import HiddenStatePolicy
from spi_align.core.records import Prompt
from spi_align.data.prompts import heldout_prompts
from spi_align.scoring.ranking import prompt_spearman
from spi_align.values.features import response_hidden_states
from spi_align.values.heads import ValueHead
from spi_align.values.train import fit_head, prefix_values, token_dataset

PREFIXES: tuple[int | None, ...] = (8, 16, 32, None)
"""Prefix lengths (tokens) at which ranking quality is reported; None = the whole response."""


def flatten_rollouts(
    records: Sequence[dict[str, Any]], prompts: dict[str, Prompt]
) -> tuple[list[Prompt], list[list[int]], list[float | None]]:
    """Every candidate of every record (each is one rollout of the current policy)."""
    flat_prompts, tokens, scores = [], [], []
    for record in records:
        for cand in record["candidates"]:
            if cand["token_ids"]:
                flat_prompts.append(prompts[record["id"]])
                tokens.append(cand["token_ids"])
                scores.append(cand["score"])
    return flat_prompts, tokens, scores


def heldout_split(groups: Sequence[str], seed: int) -> tuple[list[int], list[int]]:
    """Indices of rollouts to fit on and to test on, split by prompt (`heldout_prompts`: about a fifth held out)."""
    held = heldout_prompts(groups, seed)
    return [i for i, g in enumerate(groups) if g not in held], [i for i, g in enumerate(groups) if g in held]


def train_value(
    policy: HiddenStatePolicy,
    prompts: Sequence[Prompt],
    tokens: Sequence[Sequence[int]],
    rewards: Sequence[float],
    cfg: SPIConfig,
    seed: int,
    labels: Sequence[float] | None = None,
) -> tuple[ValueHead, dict[str, Any]]:
    """Fit V on all rollouts; report within-prompt Spearman of a fit without the held-out prompts, on them (with
    the reward, and with the judge's `labels` when given)."""
    hidden = response_hidden_states(policy, prompts, tokens)
    groups = [p.id for p in prompts]

    def probe(fit_idx: list[int], test_idx: list[int]) -> Callable[[int | None], list[float]]:
        head = _fit(hidden, rewards, groups, fit_idx, cfg, seed)
        test = [hidden[i] for i in test_idx]
        return lambda prefix: prefix_values(head, test, prefix)

    metrics = heldout_metrics(tokens, rewards, groups, seed, probe, labels)
    head = _fit(hidden, rewards, groups, list(range(len(tokens))), cfg, seed)
    return head, metrics


def heldout_metrics(
    tokens: Sequence[Sequence[int]],
    rewards: Sequence[float],
    groups: Sequence[str],
    seed: int,
    probe: Callable[[list[int], list[int]], Callable[[int | None], Sequence[float]]],
    labels: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Counts of the rollouts, and `heldout_spearman_at_<prefix>`: the within-prompt Spearman with the reward, at
    each of `PREFIXES`, of a value function fitted on the other prompts and read on the held-out ones
    (`heldout_prompts`), over `heldout_ranked_prompts_at_<prefix>` prompts of which
    `heldout_constant_prompts_at_<prefix>` got equal values for all their rollouts (counted as 0; `prompt_spearman`).
    `probe(fit_idx, test_idx)` fits it and returns `at(prefix)`, its values for the test rollouts after `prefix`
    tokens. With `labels` (the judge's score of each rollout) the same values' within-prompt Spearman with them
    too, `heldout_judge_spearman_at_<prefix>`. Nothing is chosen here (the head's ridge, the model's epochs are
    settings), so no inner split is needed; a caller that chooses must choose without the held-out prompts."""
    metrics: dict[str, Any] = {
        "rollouts": len(tokens),
        "prompts": len(set(groups)),
        "tokens": sum(len(t) for t in tokens),
    }
    fit_idx, test_idx = heldout_split(groups, seed)
    if fit_idx and test_idx:
        at = probe(fit_idx, test_idx)
        test_rewards, test_groups = [rewards[i] for i in test_idx], [groups[i] for i in test_idx]
        for prefix in PREFIXES:
            ranked = prompt_spearman(at(prefix), test_rewards, test_groups)
            at_ = f"at_{prefix or 'end'}"
            metrics[f"heldout_spearman_{at_}"] = ranked.mean
            metrics[f"heldout_ranked_prompts_{at_}"] = ranked.prompts
            metrics[f"heldout_constant_prompts_{at_}"] = ranked.constant
            if labels is not None:
                judged = prompt_spearman(at(prefix), [labels[i] for i in test_idx], test_groups)
                metrics[f"heldout_judge_spearman_{at_}"] = judged.mean
    return metrics


def _fit(hidden, rewards, groups, index: list[int], cfg: SPIConfig, seed: int) -> ValueHead:
    data = token_dataset(
        [hidden[i] for i in index], [rewards[i] for i in index], [groups[i] for i in index], cfg.centered
    )
    return fit_head(data, kind=cfg.head, ridge=cfg.ridge, seed=seed)
