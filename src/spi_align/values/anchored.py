"""Values anchored on the reward of the partial response: V(x, y_{1:t}) = R_t + α · u(e_t)  (`spi.value: anchored`).

R_t = r(x, y_{1:t}) is the reward on the partial response, which ranks a prompt's candidates with no training
at all: for a reward head on the policy's states, the head on e_t, the policy's state after the partial response
closed with the end token (`HeadAnchor`); for any other reward (a text scorer, a reward-model directory, a
callable), the scorer on the decoded partial response (`TextAnchor`, one batched call). The learned
part u is a linear head on the same state, fitted by eq. 12 to the residual r(x, y) − R_t (centred within each
prompt and prefix length: the search only compares one prompt's candidates at one length). So V predicts the
final reward as eq. 12 asks, starting from the free estimate instead of from nothing.

The learned part must earn its place: the ridge penalty and α ∈ {0, ½, 1} are chosen on held-out training prompts
by within-prompt Spearman with the final reward, averaged over the prefix lengths the search ranks at (multiples
of the chunk length L); α = 0 means V is the partial reward alone. The metrics report, per length, the held-out
Spearman of R_t alone beside that of V.

During the search e_t costs one one-token forward per chunk (the KV cache is cropped back after), shared by the
reward anchor and every round's head: Σ_i w_i V_i = (Σ_i w_i) R_t + Σ_i w_i α_i u_i(e_t). A text reward adds one
scorer call on the decoded candidates per chunk.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import torch

from spi_align.values.heads import HeadStack, ValueHead
from spi_align.values.prefix_states import PrefixStates
from spi_align.values.train import TokenDataset, fit_head, within_prompt_spearman

ALPHAS = (0.0, 0.5, 1.0)
RIDGE_FACTORS = (1.0, 10.0, 100.0)


def decision_lengths(chunk: int, max_new_tokens: int) -> list[int]:
    """The prefix lengths at which the chunk search ranks live candidates: L, 2L, ... below max_new_tokens."""
    return list(range(chunk, max_new_tokens, chunk))


def boundary_rows(
    states: Sequence[PrefixStates], lengths: Sequence[int], rewards: Sequence[float], groups: Sequence[Hashable]
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[Hashable, int]], list[int]]:
    """(closed states (n, H), final rewards (n,), (group, length) keys, rollout index) of every rollout still
    unfinished at each decision length (a rollout that already ended there is never ranked)."""
    wanted = set(lengths)
    feats, targets, keys, index = [], [], [], []
    for i, s in enumerate(states):
        full = s.lengths[-1] if s.lengths else 0
        for k, t in enumerate(s.lengths):
            if t in wanted and t < full:
                feats.append(s.closed[k])
                targets.append(float(rewards[i]))
                keys.append((groups[i], t))
                index.append(i)
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0), [], []
    return torch.stack(feats).float(), torch.tensor(targets), keys, index


def centred(values: torch.Tensor, keys: Sequence[Hashable]) -> torch.Tensor:
    """`values` (n,) or (n, d) minus the mean of its key's members."""
    ids = {k: j for j, k in enumerate(dict.fromkeys(keys))}
    gid = torch.tensor([ids[k] for k in keys])
    sums = torch.zeros(len(ids), *values.shape[1:]).index_add_(0, gid, values)
    counts = torch.zeros(len(ids)).index_add_(0, gid, torch.ones(len(values)))
    return values - (sums / counts.reshape(-1, *[1] * (values.dim() - 1)))[gid]


Anchor = Callable[[torch.Tensor, Sequence[int], Sequence[tuple[Hashable, int]]], torch.Tensor]
"""R_t of boundary rows: (closed states (n, H), rollout index, (group, length) keys) → (n,) partial rewards."""


class HeadAnchor:
    """R_t from a reward head on the closed states."""

    def __init__(self, head: torch.nn.Linear) -> None:
        self.head = head

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, index: Sequence[int], keys: Sequence[tuple[Hashable, int]]) -> torch.Tensor:
        return self.head(x.to(self.head.weight)).squeeze(-1).float().cpu()


class TextAnchor:
    """R_t from a scorer on (prompt, the rollout's first t tokens decoded), in one call."""

    def __init__(self, reward: Any, tokenizer: Any, prompts: Sequence[Any], tokens: Sequence[Sequence[int]]) -> None:
        self.reward, self.tokenizer, self.prompts, self.tokens = reward, tokenizer, prompts, tokens

    def __call__(self, x: torch.Tensor, index: Sequence[int], keys: Sequence[tuple[Hashable, int]]) -> torch.Tensor:
        from spi_align.scoring.finite import finite_scores

        prefixes = [list(self.tokens[i][:t]) for i, (_, t) in zip(index, keys, strict=True)]
        texts = self.tokenizer.batch_decode(prefixes, skip_special_tokens=True)
        scores = self.reward.score([self.prompts[i] for i in index], texts)
        return torch.tensor(finite_scores(self.reward, scores, texts), dtype=torch.float32)


def _fit(x: torch.Tensor, residual: torch.Tensor, keys, ridge: float, seed: int) -> ValueHead:
    """Ridge on within-(prompt, length) deviations of features and residual: only a prompt's own candidates at one
    length are ever compared, so between-prompt differences must not steer the fit. The head then reads raw states
    (any per-prompt offset it adds does not change a ranking)."""
    xc = centred(x, keys)
    data = TokenDataset(xc, residual, torch.arange(len(residual)), torch.zeros(len(residual), dtype=torch.long))
    return fit_head(data, kind="linear", ridge=ridge, seed=seed)


def _by_length(predicted: torch.Tensor, final: torch.Tensor, keys, lengths) -> dict[int, float]:
    """Held-out within-prompt Spearman with the final reward at each length."""
    out = {}
    for t in lengths:
        rows = [j for j, (_, length) in enumerate(keys) if length == t]
        if rows:
            out[t] = within_prompt_spearman(predicted[rows].tolist(), final[rows].tolist(), [keys[j][0] for j in rows])
    return out


def _mean(scores: dict[int, float]) -> float:
    good = [v for v in scores.values() if v == v]
    return sum(good) / len(good) if good else float("-inf")


def fit_anchored(
    states: Sequence[PrefixStates],
    rewards: Sequence[float],
    groups: Sequence[str],
    anchor: torch.nn.Linear | Anchor,
    lengths: Sequence[int],
    ridge: float,
    seed: int,
) -> tuple[ValueHead, dict[str, Any]]:
    """The residual head u (α folded into its weights) and its held-out ranking, next to the anchor's. `anchor`:
    the reward head on the closed states, or any `Anchor` (e.g. `TextAnchor`)."""
    x, final, keys, index = boundary_rows(states, lengths, rewards, groups)
    metrics: dict[str, Any] = {"rollouts": len(states), "prompts": len(set(groups)), "states": len(keys)}
    if not keys:
        size = anchor.in_features if isinstance(anchor, torch.nn.Linear) else None
        head = ValueHead(size or (states[0].closed.shape[-1] if states else 1))
        torch.nn.init.zeros_(head.net.weight)  # type: ignore[arg-type]
        torch.nn.init.zeros_(head.net.bias)  # type: ignore[arg-type]
        return head.eval(), {**metrics, "alpha": 0.0}
    partial = (HeadAnchor(anchor) if isinstance(anchor, torch.nn.Linear) else anchor)(x, index, keys)
    residual = centred(final - partial, keys)
    ids = sorted(set(groups))
    random.Random(seed).shuffle(ids)
    held = set(ids[: max(1, len(ids) // 5)])
    test = torch.tensor([k[0] in held for k in keys])
    best = (float("-inf"), ridge, 0.0)
    if 0 < int(test.sum()) < len(keys):
        tkeys = [k for k, h in zip(keys, test.tolist(), strict=True) if h]
        base = _by_length(partial[test], final[test], tkeys, lengths)
        for t, v in base.items():
            metrics[f"partial_reward_spearman_at_{t}"] = v
        fkeys = [k for k, h in zip(keys, test.tolist(), strict=True) if not h]
        for factor in RIDGE_FACTORS:
            probe = _fit(x[~test], centred(final[~test] - partial[~test], fkeys), fkeys, ridge * factor, seed)
            with torch.no_grad():
                learned = probe(x[test])
            for alpha in ALPHAS:
                score = _mean(_by_length(partial[test] + alpha * learned, final[test], tkeys, lengths))
                if score > best[0] + 1e-9:
                    best = (score, ridge * factor, alpha)
        _, chosen_ridge, alpha = best
        probe = _fit(x[~test], centred(final[~test] - partial[~test], fkeys), fkeys, chosen_ridge, seed)
        with torch.no_grad():
            chosen = _by_length(partial[test] + alpha * probe(x[test]), final[test], tkeys, lengths)
        for t, v in chosen.items():
            metrics[f"spearman_at_{t}"] = v
    _, chosen_ridge, alpha = best
    head = _fit(x, residual, keys, chosen_ridge, seed)
    with torch.no_grad():
        head.net.weight.mul_(alpha)  # type: ignore[operator]
        head.net.bias.mul_(alpha)  # type: ignore[operator]
    metrics.update({"ridge": chosen_ridge, "alpha": alpha})
    return head.eval(), metrics


class AnchoredGuide:
    """Σ_i w_i (R_t + u_i(e_t)) over rows: one end-token peek per call, shared by the anchor (a reward head) and
    every head; a text reward's anchor is a `ValueFunction` on the rows (the scorer on the decoded candidates)."""

    def __init__(
        self,
        policy: Any,
        anchor: torch.nn.Linear | Callable[[Any], torch.Tensor],
        heads: Sequence[ValueHead],
        weights: Sequence[float],
    ) -> None:
        self.policy, self.anchor = policy, anchor
        self.total_weight = float(sum(weights))
        self.stack = HeadStack(list(heads), list(weights)).to(policy.device)
        self.learned = any(
            w != 0 and any(bool(p.detach().abs().max() > 0) for p in h.parameters() if p.numel())
            for h, w in zip(heads, weights, strict=True)
        )
        """False when every round kept α = 0: V is the partial reward alone, and a text anchor needs no peek."""

    @torch.no_grad()
    def __call__(self, rows: Any) -> torch.Tensor:
        if not self.learned and not isinstance(self.anchor, torch.nn.Linear):
            return self.total_weight * self.anchor(rows).float()
        closed = self.policy.peek_end_hidden(rows)
        if isinstance(self.anchor, torch.nn.Linear):
            anchor = self.anchor(closed.to(self.anchor.weight.dtype)).squeeze(-1).float()
        else:
            anchor = self.anchor(rows).to(closed.device).float()
        return self.total_weight * anchor + self.stack(closed).float()
