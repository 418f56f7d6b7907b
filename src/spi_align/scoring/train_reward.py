"""Algorithm 1, line 3: a Bradley–Terry reward model from preference pairs.

For the embedded default there is no preference data, so pairs are made: policy samples on training prompts,
labelled by a scorer (the evaluator), best vs worst. The reward model is the frozen policy backbone with a
scalar head; only the head is trained, on features computed once.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from spi_align.config import RewardTrainConfig
from spi_align.data import heldout_prompts
from spi_align.errors import SpiError
from spi_align.interfaces import Prompt, Scorer
from spi_align.scoring.finite import finite_scores
from spi_align.scoring.reward_model import RewardModel


def make_pairs(
    prompts: Sequence[Prompt], candidates: Sequence[Sequence[str]], labeller: Scorer, per_prompt: int
) -> list[tuple[Prompt, str, str]]:
    """(prompt, chosen, rejected): i-th best against i-th worst by the labeller; ties and duplicates skipped."""
    flat = [(p, c) for p, cands in zip(prompts, candidates, strict=True) for c in dict.fromkeys(cands)]
    texts = [c for _, c in flat]
    scores = finite_scores(labeller, labeller.score([p for p, _ in flat], texts), texts)
    by_prompt: dict[str, list[tuple[float, str]]] = {}
    for (p, c), s in zip(flat, scores, strict=True):
        by_prompt.setdefault(p.id, []).append((s, c))
    lookup = {p.id: p for p in prompts}
    pairs = []
    for pid, scored in by_prompt.items():
        ranked = sorted(scored, key=lambda sc: -sc[0])
        for i in range(min(per_prompt, len(ranked) // 2)):
            (s_hi, hi), (s_lo, lo) = ranked[i], ranked[-1 - i]
            if s_hi > s_lo:
                pairs.append((lookup[pid], hi, lo))
    return pairs


@torch.no_grad()
def _features(model: RewardModel, texts: Sequence[str], batch_size: int = 16) -> torch.Tensor:
    out = []
    for start in range(0, len(texts), batch_size):
        out.append(model.features(**model.tokenize(texts[start : start + batch_size])).float())
    return torch.cat(out)


def bradley_terry_loss(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """-log σ(r_chosen - r_rejected), averaged."""
    return -torch.nn.functional.logsigmoid(chosen - rejected).mean()


def _fit_bt(zc: torch.Tensor, zr: torch.Tensor, cfg: RewardTrainConfig, weight_decay: float, seed: int):
    """Full-batch Adam on the Bradley–Terry loss over standardised features; returns the linear head."""
    torch.manual_seed(seed)
    lin = torch.nn.Linear(zc.shape[1], 1)
    torch.nn.init.zeros_(lin.weight)
    opt = torch.optim.Adam(lin.parameters(), lr=cfg.lr, weight_decay=weight_decay)
    for _ in range(cfg.epochs):
        loss = bradley_terry_loss(lin(zc).squeeze(-1), lin(zr).squeeze(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lin


def _accuracy(lin: torch.nn.Linear, zc: torch.Tensor, zr: torch.Tensor) -> float:
    with torch.no_grad():
        return float((lin(zc) > lin(zr)).float().mean())


def all_pairs(groups: Sequence[str], labels: Sequence[float]) -> list[tuple[int, int]]:
    """(chosen, rejected) index pairs: every two samples of one prompt whose labels differ, better first."""
    by_group: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    return [(a, b) for members in by_group.values() for a in members for b in members if labels[a] > labels[b]]


def _fit_head(
    head: torch.nn.Linear, chosen: torch.Tensor, rejected: torch.Tensor, prompt_ids: Sequence[str], cfg, seed: int
) -> dict[str, float]:
    """Choose the weight decay on held-out prompts' pairs, refit on all pairs, fold into `head`."""
    mean, scale = torch.cat([chosen, rejected]).mean(0), torch.cat([chosen, rejected]).std(0).clamp(min=1e-6)
    zc, zr = (chosen - mean) / scale, (rejected - mean) / scale
    held = heldout_prompts(prompt_ids, seed)
    test = torch.tensor([p in held for p in prompt_ids])
    heldout: dict[float, float] = {}
    if 0 < int(test.sum()) < len(prompt_ids):
        for wd in cfg.weight_decay:
            probe = _fit_bt(zc[~test], zr[~test], cfg, wd, seed)
            heldout[wd] = _accuracy(probe, zc[test], zr[test])
    best = max(heldout, key=lambda wd: (heldout[wd], wd)) if heldout else cfg.weight_decay[0]
    lin = _fit_bt(zc, zr, cfg, best, seed)
    with torch.no_grad():  # fold the standardisation into the head: reward = w·h + b on raw features
        w = lin.weight[0] / scale
        head.weight.copy_(w[None].to(head.weight))
        head.bias.fill_(float(lin.bias[0] - (mean * w).sum()))
    return {
        "pairs": len(prompt_ids),
        "weight_decay": best,
        "heldout_accuracy": heldout.get(best, float("nan")),
        "heldout_accuracy_by_weight_decay": {str(k): v for k, v in heldout.items()},
        "train_accuracy": _accuracy(lin, zc, zr),
    }


def train_reward_head(
    model: RewardModel, pairs: Sequence[tuple[Prompt, str, str]], cfg: RewardTrainConfig, seed: int = 0
) -> dict[str, float]:
    """Fit `model.head` by Bradley–Terry on frozen-backbone features of (prompt, chosen, rejected) texts.

    The weight decay is chosen among `cfg.weight_decay` candidates by accuracy on pairs of held-out prompts
    (a fifth of them); the head is then refitted on all pairs. Returns the held-out and training accuracies.
    """
    if not pairs:
        raise SpiError("no preference pairs: the labeller gave every sample of each prompt the same score")
    chosen = _features(model, [model.format(p.text, c) for p, c, _ in pairs])
    rejected = _features(model, [model.format(p.text, r) for p, _, r in pairs])
    return _fit_head(model.head, chosen, rejected, [p.id for p, _, _ in pairs], cfg, seed)


def train_reward_head_on_states(
    model: RewardModel,
    states: torch.Tensor,
    groups: Sequence[str],
    labels: Sequence[float],
    cfg: RewardTrainConfig,
    seed: int = 0,
) -> dict[str, float]:
    """Bradley–Terry on every ordered pair of one prompt's samples (`all_pairs`), from each sample's state at its
    end token (`states`, (N, H): what `model.features` reads, computed once per sample, not once per pair).

    Besides the pair accuracies, reports the held-out within-prompt Spearman of the fitted reward with the labels
    (a head refitted without the held-out prompts)."""
    from spi_align.values.train import within_prompt_spearman

    pairs = all_pairs(groups, labels)
    if not pairs:
        raise SpiError("no preference pairs: the labeller gave every sample of each prompt the same score")
    states = states.float()
    chosen, rejected = states[[a for a, _ in pairs]], states[[b for _, b in pairs]]
    metrics = _fit_head(model.head, chosen, rejected, [groups[a] for a, _ in pairs], cfg, seed)
    held = heldout_prompts(groups, seed)
    fit = [k for k, (a, _) in enumerate(pairs) if groups[a] not in held]
    test = [i for i, g in enumerate(groups) if g in held]
    if fit and test:
        probe = torch.nn.Linear(states.shape[1], 1)
        probe_cfg = cfg.model_copy(update={"weight_decay": [metrics["weight_decay"]]})
        _fit_head(probe, chosen[fit], rejected[fit], [groups[pairs[k][0]] for k in fit], probe_cfg, seed)
        with torch.no_grad():
            predicted = probe(states[test]).squeeze(-1).tolist()
        metrics["heldout_spearman_with_labeller"] = within_prompt_spearman(
            predicted, [labels[i] for i in test], [groups[i] for i in test]
        )
    return metrics
