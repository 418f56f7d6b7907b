"""Algorithm 1, line 3: a Bradley–Terry reward model from preference pairs.

For the embedded default there is no preference data, so pairs are made: policy samples on training prompts,
labelled by a scorer (the evaluator), paired within each prompt by `preference_pairs` (every ordered pair whose
labels differ, or the i-th best against the i-th worst): the one pair list both this reward model and the DPO
baseline train on. The reward model is the frozen policy backbone with a scalar head; only the head is trained, on
features computed once (`reward_model.layers: 0`, the default; tuning the top layers as well is
`train/reward_trainer.py`). The head has no offset: Bradley–Terry fixes a reward only up to a constant, and the
score layer of the transformers classifier it is saved as (`RewardModel.save_classifier`) has no bias.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from spi_align.config import RewardTrainConfig
from spi_align.core.errors import SpiError
from spi_align.core.records import Prompt
from spi_align.data.prompts import prompt_split
from spi_align.scoring.ranking import differing_pairs, group_rows
from spi_align.scoring.reward_model import RewardModel


@torch.no_grad()
def _features(model: RewardModel, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    out = []
    for start in range(0, len(texts), batch_size):
        out.append(model.features(**model.tokenize(texts[start : start + batch_size])).float())
    return torch.cat(out)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log σ(r_chosen - r_rejected), averaged."""
    return -torch.nn.functional.logsigmoid(chosen - rejected).mean()


def fit_bradley_terry(
    chosen: torch.Tensor, rejected: torch.Tensor, cfg: RewardTrainConfig, weight_decay: float, seed: int
) -> torch.nn.Linear:
    """Full-batch Adam (`cfg.epochs` steps at `cfg.lr`) on the Bradley–Terry loss over features standardised by these
    pairs' own mean and spread; returns the linear head on raw features, reward = w·h (the scale folded in; the
    bias, which the loss never moves, is 0)."""
    both = torch.cat([chosen, rejected])
    mean, scale = both.mean(0), both.std(0).clamp(min=1e-6)
    zc, zr = (chosen - mean) / scale, (rejected - mean) / scale
    torch.manual_seed(seed)
    lin = torch.nn.Linear(zc.shape[1], 1)
    torch.nn.init.zeros_(lin.weight)
    opt = torch.optim.Adam(lin.parameters(), lr=cfg.lr, weight_decay=weight_decay)
    for _ in range(cfg.epochs):
        loss = bradley_terry_loss(lin(zc).squeeze(-1), lin(zr).squeeze(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        w = lin.weight[0] / scale
        lin.weight.copy_(w[None])
        lin.bias.zero_()
    return lin


def _accuracy(lin: torch.nn.Linear, chosen: torch.Tensor, rejected: torch.Tensor) -> float:
    with torch.no_grad():
        return float((lin(chosen) > lin(rejected)).float().mean())


def all_pairs(groups: Sequence[str], labels: Sequence[float]) -> list[tuple[int, int]]:
    """(chosen, rejected) index pairs: every two samples of one prompt whose labels differ, better first; prompt by
    prompt, by the chosen sample's index, then the rejected one's."""
    return [pair for pairs in differing_pairs(groups, labels) for pair in sorted(pairs)]


def preference_pairs(
    groups: Sequence[str], labels: Sequence[float], per_prompt: int | None = None
) -> list[tuple[int, int]]:
    """(chosen, rejected) sample index pairs within each prompt (`groups`), better first, labels differing: every
    ordered pair (`all_pairs`) when `per_prompt` is None, else the i-th best against the i-th worst for i below
    `per_prompt` (ties in the ranking keep sample order). What both the reward model and DPO are trained on."""
    if per_prompt is None:
        return all_pairs(groups, labels)
    pairs = []
    for members in group_rows(groups).values():
        ranked = sorted(members, key=lambda i: -labels[i])
        for i in range(min(per_prompt, len(ranked) // 2)):
            best, worst = ranked[i], ranked[-1 - i]
            if labels[best] > labels[worst]:
                pairs.append((best, worst))
    return pairs


def _fit_head(
    head: torch.nn.Linear | None,
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    prompt_ids: Sequence[str],
    cfg: RewardTrainConfig,
    seed: int,
    split: tuple[set[str], set[str], set[str]],
) -> tuple[dict[str, Any], torch.nn.Linear | None]:
    """Fit `head` on all pairs with a weight decay chosen without the held-out prompts; returns the metrics and the
    probe: the same fit on the training prompts' pairs only, or None when either side has no pair.

    `split`: the (fit, choice, held-out) prompts (`prompts.prompt_split`). Each candidate decay is fitted on the fit
    prompts' pairs and scored on the choice prompts' (`choice_accuracy_by_weight_decay`); the best one is refitted
    on every training pair (fit and choice) and read on the held-out pairs (`heldout_accuracy`); the head itself is
    fitted on all pairs."""
    fit_ids, choice_ids, held = split
    fit = [k for k, p in enumerate(prompt_ids) if p in fit_ids]
    pick = [k for k, p in enumerate(prompt_ids) if p in choice_ids]
    train = sorted(fit + pick)
    test = [k for k, p in enumerate(prompt_ids) if p in held]
    by_decay: dict[float, float] = {}
    if fit and pick:
        for wd in cfg.weight_decay:
            candidate = fit_bradley_terry(chosen[fit], rejected[fit], cfg, wd, seed)
            by_decay[wd] = _accuracy(candidate, chosen[pick], rejected[pick])
    best = max(by_decay, key=lambda wd: (by_decay[wd], wd)) if by_decay else cfg.weight_decay[0]
    probe = fit_bradley_terry(chosen[train], rejected[train], cfg, best, seed) if train and test else None
    lin = fit_bradley_terry(chosen, rejected, cfg, best, seed)
    if head is not None:
        with torch.no_grad():
            head.weight.copy_(lin.weight.to(head.weight))
            head.bias.copy_(lin.bias.to(head.bias))
    metrics = {
        "pairs": len(prompt_ids),
        "heldout_pairs": len(test),
        "weight_decay": best,
        "choice_accuracy": by_decay.get(best, float("nan")),
        "choice_accuracy_by_weight_decay": {str(k): v for k, v in by_decay.items()},
        "heldout_accuracy": _accuracy(probe, chosen[test], rejected[test]) if probe is not None else float("nan"),
        "train_accuracy": _accuracy(lin, chosen, rejected),
    }
    return metrics, probe


def train_reward_head(
    model: RewardModel, pairs: Sequence[tuple[Prompt, str, str]], cfg: RewardTrainConfig, seed: int = 0
) -> dict[str, Any]:
    """Fit `model.head` by Bradley–Terry on frozen-backbone features of (prompt, chosen, rejected) texts.

    The weight decay is chosen among `cfg.weight_decay` candidates by accuracy on pairs of choice prompts (a split
    of the training prompts); a head fitted with it without the held-out prompts (`prompts.prompt_split`) is read on
    their pairs; the head itself is then fitted on all pairs. Returns the choice, held-out and training accuracies.
    """
    if not pairs:
        raise SpiError("no preference pairs: the labeller gave every sample of each prompt the same score")
    chosen = _features(model, [model.format(p, c) for p, c, _ in pairs])
    rejected = _features(model, [model.format(p, r) for p, _, r in pairs])
    prompt_ids = [p.id for p, _, _ in pairs]
    metrics, _ = _fit_head(model.head, chosen, rejected, prompt_ids, cfg, seed, prompt_split(prompt_ids, seed))
    return metrics


def train_reward_head_on_states(
    model: RewardModel | None,
    states: torch.Tensor,
    groups: Sequence[str],
    labels: Sequence[float],
    cfg: RewardTrainConfig,
    seed: int = 0,
    pairs: Sequence[tuple[int, int]] | None = None,
) -> dict[str, Any]:
    """Bradley–Terry on `pairs` of samples (default: `preference_pairs(groups, labels, cfg.pairs_per_prompt)`), from
    each sample's state at its end token (`states`, (N, H): what `model.features` reads, computed once per sample,
    not once per pair). `model`: whose head is fitted (None: only measure, as a top-layers tune does for its start).

    Besides the pair accuracies, reports the held-out within-prompt Spearman of the probe's reward with the labels
    (`heldout_spearman_with_labeller`): the probe whose pair accuracy `heldout_accuracy` is, on the same held-out
    prompts (`prompts.prompt_split` of every sample's prompt, so a prompt without pairs moves no other), averaged over
    `heldout_ranked_prompts` prompts, of which `heldout_constant_prompts` got one reward for every sample (as 0)."""
    from spi_align.scoring.ranking import prompt_spearman

    pairs = list(pairs) if pairs is not None else preference_pairs(groups, labels, cfg.pairs_per_prompt)
    if not pairs:
        raise SpiError("no preference pairs: the labeller gave every sample of each prompt the same score")
    states = states.float()
    chosen, rejected = states[[a for a, _ in pairs]], states[[b for _, b in pairs]]
    split = prompt_split(groups, seed)
    head = model.head if model is not None else None
    metrics, probe = _fit_head(head, chosen, rejected, [groups[a] for a, _ in pairs], cfg, seed, split)
    test = [i for i, g in enumerate(groups) if g in split[2]]
    if probe is not None:
        with torch.no_grad():
            predicted = probe(states[test]).squeeze(-1).tolist()
        ranked = prompt_spearman(predicted, [labels[i] for i in test], [groups[i] for i in test])
        metrics["heldout_spearman_with_labeller"] = ranked.mean
        metrics["heldout_ranked_prompts"] = ranked.prompts
        metrics["heldout_constant_prompts"] = ranked.constant
    return metrics
