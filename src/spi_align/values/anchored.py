"""Values anchored on the reward of the partial response: V(x, y_{1:t}) = R_t + α · u(e_t)  (`spi.value: anchored`).

R_t = r(x, y_{1:t}) is the reward on the partial response, which ranks a prompt's candidates with no training
at all: for a reward head on the policy's states, the head on e_t, the policy's state after the partial response
closed with the end token (`HeadAnchor`); for any other reward (a text scorer, a reward-model directory, a
callable), the scorer on the decoded partial response (`TextAnchor`, one batched call). The learned
part u is a linear head on the same state, fitted by eq. 12 to the residual r(x, y) − R_t (centred within each
prompt and prefix length: the search only compares one prompt's candidates at one length). So V predicts the
final reward as eq. 12 asks, starting from the free estimate instead of from nothing.

Targets: a prefix shared by several rollouts of one prompt (siblings of a tree rollout, `spi.tree`, or the
candidates one beam of the search finished) is one training row whose target is the mean reward of its leaves,
a lower-variance estimate of its value than any one leaf's reward.

Loss: eq. 12's squared error on the residual, plus optionally (weight λ) a within-prompt ranking loss on V itself,
the pairwise logistic loss Σ_{i,j: r_i > r_j} log(1 + exp(−(V_i − V_j)/σ)) over pairs of one prompt's rows at one
length (σ: the standard deviation of the centred residual), since the search only ever compares such rows.

The learned part must earn its place, and is measured on prompts no choice saw. The prompts are split three ways
by id (`prompts.prompt_split`): the held-out fifth, and the rest into fit prompts and about a fifth of choice prompts.
The ridge penalty, λ and α ∈ {0, ½, 1} are chosen on the choice prompts, for heads fitted on the fit prompts, by
within-prompt Spearman with the target averaged over the prefix lengths the search ranks at (multiples of the chunk
length L); with `per_depth` α is chosen at each length on its own (the partial reward ranks better the longer the
prefix, so the learned part may help early and not late). α = 0 means V is the partial reward alone. With those
choices u is refitted on every training prompt (fit and choice) and read on the held-out prompts: the metrics give,
per length, the held-out Spearman of R_t alone beside that of V (`heldout_partial_reward_spearman_at_<t>`,
`heldout_spearman_at_<t>`; V may rank worse than R_t there), both over the same `heldout_ranked_prompts_at_<t>`
prompts, with the prompts each scored all alike (`heldout_partial_reward_constant_prompts_at_<t>`,
`heldout_constant_prompts_at_<t>`; counted as 0), and the figure the choice maximised on the choice prompts
(`choice_spearman_at_<t>`, optimistic by construction). The value used in the search is refitted on all
prompts with the same choices.

During the search e_t costs one one-token forward per chunk (the KV cache is cropped back after), shared by the
reward anchor and every round's head: Σ_i w_i V_i = (Σ_i w_i) R_t + Σ_i w_i α_i(t) u_i(e_t), α_i(t) the α of the
longest decision length ≤ t. A text reward adds one scorer call on the decoded candidates per chunk, and needs
e_t only at the lengths where some round's α is not 0: elsewhere V is R_t alone and no peek is made. On vLLM a peek
is a state read, which computes what its engine has not read before: an α chosen 0 at the later lengths saves their
reads, while one chosen 0 early and not later only moves the early chunk into the later read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import torch

from spi_align.core.records import report_term, reporting_terms
from spi_align.data.prompts import prompt_split
from spi_align.scoring.ranking import PromptSpearman, centred, differing_pairs, prompt_spearman
from spi_align.scoring.reward_model import head_values
from spi_align.values.heads import ValueHead, guidance_weights, weighted_total
from spi_align.values.prefix_states import PrefixStates
from spi_align.values.train import TokenDataset, fit_head

ALPHAS = (0.0, 0.5, 1.0)
RIDGE_FACTORS = (1.0, 10.0, 100.0)
ALPHA_FILE = "anchored.json"


def decision_lengths(chunk: int, max_new_tokens: int) -> list[int]:
    """The prefix lengths at which the chunk search ranks live candidates: L, 2L, ... below max_new_tokens."""
    return list(range(chunk, max_new_tokens, chunk))


def boundary_rows(
    states: Sequence[PrefixStates],
    lengths: Sequence[int],
    rewards: Sequence[float],
    groups: Sequence[Hashable],
    tokens: Sequence[Sequence[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[Hashable, int]], list[int]]:
    """(closed states (n, H), targets (n,), (group, length) keys, rollout index) of every prefix still unfinished
    at a decision length (a rollout that already ended there is never ranked). With `tokens`, rollouts of one group
    that share their first t tokens give one row at length t (the first one's state and index) whose target is the
    mean reward of all of them: a tree node's target is the mean of its leaves. Without, one row per rollout.
    The mean is flat over leaves: in a tree of three or more levels where a child ended before the next branching
    (kept once) while its sibling branched, the sibling's leaves weigh more; with `spi.tree`'s default two levels
    every node's leaves come from equally branched children."""
    wanted = set(lengths)
    rows: dict[Hashable, list[Any]] = {}
    for i, s in enumerate(states):
        full = s.lengths[-1] if s.lengths else 0
        for k, t in enumerate(s.lengths):
            if t in wanted and t < full:
                node = (groups[i], t, tuple(tokens[i][:t])) if tokens is not None else (i, t)
                if node in rows:
                    rows[node][1] += float(rewards[i])
                    rows[node][2] += 1
                else:
                    rows[node] = [s.closed[k], float(rewards[i]), 1, (groups[i], t), i]
    if not rows:
        return torch.zeros(0, 0), torch.zeros(0), [], []
    found = list(rows.values())
    feats = torch.stack([r[0] for r in found]).float()
    targets = torch.tensor([r[1] / r[2] for r in found])
    return feats, targets, [r[3] for r in found], [r[4] for r in found]


Anchor = Callable[[torch.Tensor, Sequence[int], Sequence[tuple[Hashable, int]]], torch.Tensor]
"""R_t of boundary rows: (closed states (n, H), rollout index, (group, length) keys) → (n,) partial rewards."""


class HeadAnchor:
    """R_t from a reward head on the closed states."""

    def __init__(self, head: torch.nn.Linear) -> None:
        self.head = head

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, index: Sequence[int], keys: Sequence[tuple[Hashable, int]]) -> torch.Tensor:
        return head_values(self.head, x).cpu()


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


def ranking_pairs(
    targets: torch.Tensor | Sequence[float], keys: Sequence[Hashable]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(better, worse) row indices of every pair of rows with one key whose targets differ, better first
    (`differing_pairs`)."""
    values = targets.tolist() if isinstance(targets, torch.Tensor) else list(targets)
    pairs = [pair for group in differing_pairs(keys, values) for pair in group]
    better, worse = [b for b, _ in pairs], [w for _, w in pairs]
    return torch.tensor(better, dtype=torch.long), torch.tensor(worse, dtype=torch.long)


def ranking_loss(values: torch.Tensor, better: torch.Tensor, worse: torch.Tensor, scale: float) -> torch.Tensor:
    """Mean pairwise logistic loss log(1 + exp(−(V_better − V_worse)/scale)) (0 pairs: 0)."""
    if better.numel() == 0:
        return values.sum() * 0.0
    return torch.nn.functional.softplus(-(values[better] - values[worse]) / scale).mean()


def _fit(
    x: torch.Tensor,
    residual: torch.Tensor,
    keys: Sequence[Hashable],
    ridge: float,
    seed: int,
    rank_weight: float = 0.0,
    partial: torch.Tensor | None = None,
    pairs: tuple[torch.Tensor, torch.Tensor] | None = None,
    steps: int = 60,
) -> ValueHead:
    """Ridge on within-(prompt, length) deviations of features and residual: only a prompt's own candidates at one
    length are ever compared, so between-prompt differences must not steer the fit. The head then reads raw states
    (any per-prompt offset it adds does not change a ranking). With `rank_weight` λ > 0 the ridge solution is refined
    by L-BFGS on (‖Zw − y‖² + ridge‖w‖²)/(n σ²) + λ · ranking_loss(partial + Zw) over `pairs` (`ranking_pairs`)."""
    xc = centred(x, keys)
    data = TokenDataset(xc, residual, torch.arange(len(residual)), torch.zeros(len(residual), dtype=torch.long))
    head = fit_head(data, kind="linear", ridge=ridge, seed=seed)
    if rank_weight <= 0 or partial is None or pairs is None or pairs[0].numel() == 0:
        return head
    better, worse = pairs
    z = (xc - head.mean) / head.scale
    lin: torch.nn.Linear = head.net  # type: ignore[assignment]
    w = lin.weight.detach()[0].clone().requires_grad_(True)
    sigma = float(residual.std().clamp(min=1e-6))
    n = len(residual)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        opt.zero_grad()
        u = z @ w
        squared = ((u - residual).square().sum() + ridge * w.square().sum()) / (n * sigma**2)
        loss = squared + rank_weight * ranking_loss(partial + u, better, worse, sigma)
        loss.backward()
        return loss

    opt.step(objective)
    with torch.no_grad():
        lin.weight.copy_(w.detach()[None])
        lin.bias.zero_()
    return head.eval()


def _by_length(predicted: torch.Tensor, final: torch.Tensor, keys, lengths) -> dict[int, PromptSpearman]:
    """Within-prompt Spearman of `predicted` with the final reward at each length, on the rows given."""
    out = {}
    for t in lengths:
        rows = [j for j, (_, length) in enumerate(keys) if length == t]
        if rows:
            out[t] = prompt_spearman(predicted[rows].tolist(), final[rows].tolist(), [keys[j][0] for j in rows])
    return out


def _mean(scores: dict[int, float]) -> float:
    good = [v for v in scores.values() if v == v]
    return sum(good) / len(good) if good else float("-inf")


def choose_alphas(
    partial: torch.Tensor,
    learned: torch.Tensor,
    target: torch.Tensor,
    keys: Sequence[tuple[Hashable, int]],
    lengths: Sequence[int],
    per_depth: bool,
) -> tuple[dict[int, float], dict[int, float]]:
    """(α per length, Spearman of partial + α·learned per length on the rows given, the choice prompts'): per length
    the α of `ALPHAS` that ranks best there (`per_depth`), or one α for all that ranks best on average; ties keep
    the smaller α."""
    scored = {
        a: {t: r.mean for t, r in _by_length(partial + a * learned, target, keys, lengths).items()} for a in ALPHAS
    }
    if per_depth:
        alphas = {t: max(ALPHAS, key=lambda a: (_nan_low(scored[a].get(t)), -a)) for t in lengths}
        return alphas, {t: scored[alphas[t]][t] for t in lengths if t in scored[alphas[t]]}
    best = max(ALPHAS, key=lambda a: (_mean(scored[a]), -a))
    return {t: best for t in lengths}, scored[best]


def _nan_low(v: float | None) -> float:
    return float("-inf") if v is None or v != v else v


class AnchoredValue:
    """The learned part of one round's anchored value: u (a linear head on the closed state) and α per decision
    length; α(t) is the α of the longest decision length ≤ t (the first one's below it)."""

    def __init__(self, head: ValueHead, lengths: Sequence[int], alphas: Sequence[float]) -> None:
        if len(lengths) != len(alphas) or not lengths:
            raise ValueError("one α per decision length, at least one")
        self.head, self.lengths, self.alphas = head, [int(t) for t in lengths], [float(a) for a in alphas]

    def alpha_at(self, length: torch.Tensor) -> torch.Tensor:
        """α(t) for each prefix length in `length`."""
        bounds = torch.tensor(self.lengths, device=length.device)
        slot = (torch.searchsorted(bounds, length, right=True) - 1).clamp(min=0)
        return torch.tensor(self.alphas, device=length.device)[slot]

    @property
    def learned(self) -> bool:
        """Whether the learned part is ever used (some α > 0 and a non-zero head)."""
        return any(a != 0 for a in self.alphas) and any(
            bool(p.detach().abs().max() > 0) for p in self.head.net.parameters() if p.numel()
        )

    @torch.no_grad()
    def __call__(self, closed: torch.Tensor, length: torch.Tensor) -> torch.Tensor:
        """α(t) · u(e_t) of rows with closed states (R, H) and prefix lengths (R,)."""
        self.head.to(closed.device)
        return self.alpha_at(length.to(closed.device)) * self.head(closed).float()

    def save(self, folder: str | Path) -> None:
        self.head.save(folder)
        spec = {"lengths": self.lengths, "alphas": self.alphas}
        (Path(folder) / ALPHA_FILE).write_text(json.dumps(spec, indent=2) + "\n")

    @classmethod
    def load(cls, folder: str | Path) -> AnchoredValue:
        """A saved value; a folder without `anchored.json` (α folded into the head) gets α = 1 at every length."""
        head = ValueHead.load(folder)
        path = Path(folder) / ALPHA_FILE
        if not path.is_file():
            return cls(head, [0], [1.0])
        spec = json.loads(path.read_text())
        return cls(head, spec["lengths"], spec["alphas"])


def fit_anchored(
    states: Sequence[PrefixStates],
    rewards: Sequence[float],
    groups: Sequence[str],
    anchor: torch.nn.Linear | Anchor,
    lengths: Sequence[int],
    ridge: float,
    seed: int,
    tokens: Sequence[Sequence[int]] | None = None,
    rank_weights: Sequence[float] = (0.0,),
    per_depth: bool = False,
    labels: Sequence[float] | None = None,
) -> tuple[AnchoredValue, dict[str, Any]]:
    """The residual head u with its α per length, and its held-out ranking next to the anchor's (choices on the choice
    prompts, the ranking on held-out prompts: the module docstring). `anchor`: the
    reward head on the closed states, or any `Anchor` (e.g. `TextAnchor`); `tokens`: the rollouts' tokens, so
    shared prefixes get their leaves' mean reward (tree targets); `rank_weights`: the ranking-loss weights λ to
    choose from; `per_depth`: α chosen at each length on its own; `labels`: the judge's score of each rollout, never
    fitted on, against which the held-out ranking is reported too (`heldout_partial_reward_judge_spearman_at_<t>`,
    `heldout_judge_spearman_at_<t>`; a shared prefix's target is its leaves' mean label, as for the reward)."""
    x, final, keys, index = boundary_rows(states, lengths, rewards, groups, tokens)
    metrics: dict[str, Any] = {"rollouts": len(states), "prompts": len(set(groups)), "states": len(keys)}
    if not keys:
        size = anchor.in_features if isinstance(anchor, torch.nn.Linear) else None
        head = ValueHead(size or (states[0].closed.shape[-1] if states else 1))
        torch.nn.init.zeros_(head.net.weight)  # type: ignore[arg-type]
        torch.nn.init.zeros_(head.net.bias)  # type: ignore[arg-type]
        return AnchoredValue(head.eval(), list(lengths) or [0], [0.0] * (len(lengths) or 1)), metrics
    judged = None if labels is None else boundary_rows(states, lengths, labels, groups, tokens)[1]
    partial = (HeadAnchor(anchor) if isinstance(anchor, torch.nn.Linear) else anchor)(x, index, keys)
    residual = centred(final - partial, keys)  # centred per (prompt, length): any subset of prompts reads it as is
    fit_ids, choice_ids, held_ids = prompt_split(groups, seed)
    metrics.update({"choice_prompts": len(choice_ids), "heldout_prompts": len(held_ids)})
    side: dict[Hashable, str] = {
        g: name for name, ids in (("fit", fit_ids), ("choice", choice_ids), ("heldout", held_ids)) for g in ids
    }
    rows: dict[str, list[int]] = {"fit": [], "choice": [], "heldout": []}
    for j, (group, _) in enumerate(keys):
        rows[side[group]].append(j)
    rows["train"] = sorted(rows["fit"] + rows["choice"])

    def probe(part: list[int], ridge: float, weight: float) -> ValueHead:
        """u fitted on the rows `part` alone."""
        sub = [keys[j] for j in part]
        pairs = ranking_pairs(final[part], sub) if weight > 0 else None
        return _fit(x[part], residual[part], sub, ridge, seed, weight, partial[part], pairs)

    # choices (ridge, λ, α) on the choice prompts, of heads fitted on the fit prompts
    best: tuple[float, float, float, dict[int, float]] = (float("-inf"), ridge, 0.0, {t: 0.0 for t in lengths})
    if rows["fit"] and rows["choice"]:
        pick = rows["choice"]
        pick_keys = [keys[j] for j in pick]
        chosen: dict[int, float] = {}
        for ridge_try in (ridge * factor for factor in RIDGE_FACTORS):
            for weight in rank_weights:
                with torch.no_grad():
                    learned = probe(rows["fit"], ridge_try, weight)(x[pick])
                alphas, scores = choose_alphas(partial[pick], learned, final[pick], pick_keys, lengths, per_depth)
                if _mean(scores) > best[0] + 1e-9:
                    best, chosen = (_mean(scores), ridge_try, weight, alphas), scores
        metrics.update({f"choice_spearman_at_{t}": v for t, v in chosen.items()})
    _, chosen_ridge, rank_weight, alphas = best
    # the report: those choices, u fitted on every training prompt, read on held-out prompts no choice saw
    if rows["train"] and rows["heldout"]:
        test = rows["heldout"]
        test_keys = [keys[j] for j in test]
        with torch.no_grad():
            learned = probe(rows["train"], chosen_ridge, rank_weight)(x[test])
        alpha = torch.tensor([alphas.get(t, 0.0) for _, t in test_keys])
        for name, predicted in (("partial_reward_", partial[test]), ("", partial[test] + alpha * learned)):
            for t, ranked in _by_length(predicted, final[test], test_keys, lengths).items():
                metrics[f"heldout_{name}spearman_at_{t}"] = ranked.mean
                metrics[f"heldout_{name}constant_prompts_at_{t}"] = ranked.constant
                metrics[f"heldout_ranked_prompts_at_{t}"] = ranked.prompts  # the same for both: set by the targets
            if judged is not None:
                for t, ranked in _by_length(predicted, judged[test], test_keys, lengths).items():
                    metrics[f"heldout_{name}judge_spearman_at_{t}"] = ranked.mean
    pairs = ranking_pairs(final, keys) if rank_weight > 0 else None
    head = _fit(x, residual, keys, chosen_ridge, seed, rank_weight, partial, pairs)
    for t in lengths:
        metrics[f"alpha_at_{t}"] = alphas.get(t, 0.0)
    metrics.update({"ridge": chosen_ridge, "rank_weight": rank_weight})
    return AnchoredValue(head.eval(), list(lengths), [alphas.get(t, 0.0) for t in lengths]), metrics


class AnchoredGuide:
    """Σ_i w_i (R_t + α_i(t) u_i(e_t)) over rows: one end-token peek per call, shared by the anchor (a reward head)
    and every round's head; a text reward's anchor is a `ValueFunction` on the rows (the scorer on the decoded
    candidates)."""

    def __init__(
        self,
        policy: Any,
        anchor: torch.nn.Linear | Callable[[Any], torch.Tensor],
        values: Sequence[AnchoredValue | ValueHead],
        weights: Sequence[float],
    ) -> None:
        self.policy, self.anchor = policy, anchor
        self.values = [v if isinstance(v, AnchoredValue) else AnchoredValue(v, [0], [1.0]) for v in values]
        """Each round's value; a bare `ValueHead` is u with α = 1 at every length."""
        self.weights = guidance_weights(self.values, weights)
        self.total_weight = float(sum(weights))
        self.active = [w != 0 and v.learned for v, w in zip(self.values, self.weights, strict=True)]
        """Per round: whether its learned part counts (weight ≠ 0, some α ≠ 0, a non-zero head); read once, since
        the heads are frozen while they guide. None counts when every round kept α = 0: V is then the partial reward
        alone, and a text anchor needs no peek."""

    def reads_states(self, length: torch.Tensor) -> bool:
        """Whether some row, at its prefix length in `length`, has a term with α_i(t) ≠ 0 (weight ≠ 0, a learned
        head): only then does the learned part add anything, so only then is e_t read."""
        return any(on and bool(v.alpha_at(length).ne(0).any()) for v, on in zip(self.values, self.active, strict=True))

    @torch.no_grad()
    def __call__(self, rows: Any) -> torch.Tensor:
        """Σ_i w_i V_i; each round's V_i = R_t + α_i(t) u_i(e_t) is also reported to a trace being recorded. With an
        anchor that is not a reward head and α_i(t) = 0 for every term at every row's length (e.g. α chosen 0 at the
        later decision lengths), V is the partial reward alone there and no end-token peek is made: the same
        ranking, no state read."""
        if not isinstance(self.anchor, torch.nn.Linear) and not self.reads_states(rows.length):
            anchor = self.anchor(rows).float()
            self._report(anchor, [None] * len(self.values))
            return self.total_weight * anchor
        closed = self.policy.peek_end_hidden(rows)
        if isinstance(self.anchor, torch.nn.Linear):
            anchor = head_values(self.anchor, closed)
        else:
            anchor = self.anchor(rows).to(closed.device).float()
        residuals = [
            value(closed, rows.length) if on else None for value, on in zip(self.values, self.active, strict=True)
        ]
        self._report(anchor, residuals)
        terms = ((w, r) for w, r in zip(self.weights, residuals, strict=True) if r is not None)
        return weighted_total(terms, self.total_weight * anchor)

    def _report(self, anchor: torch.Tensor, residuals: Sequence[torch.Tensor | None]) -> None:
        if not reporting_terms():
            return
        for i, (weight, residual) in enumerate(zip(self.weights, residuals, strict=True)):
            report_term(f"V_{i}", weight, anchor if residual is None else anchor + residual.to(anchor.device).float())
